use super::*;
use proptest::prelude::*;
use serde_json::json;

fn doc() -> Value {
    json!({"v":1,"surface":"demo","components":[
        {"id":"title","type":"text","props":{"value":"Hello"}},
        {"id":"f","type":"form","props":{"title":"Ask","fields":[{"id":"q","label":"Q","type":"text"}]}}
    ]})
}

fn patch(ops: Value) -> Value {
    json!({"v":1,"ops":ops})
}

#[test]
fn patches_apply_atomically_and_bump_versions() {
    let mut s = Surface::new(doc()).unwrap();
    let update = s
        .apply_patch(Some(1), &patch(json!([
            {"op":"replace","path":"/components/0/props/value","value":"Hi"},
            {"op":"add","path":"/components/-","value":{"id":"c","type":"chart","props":{"series":[]}}},
            {"op":"add","path":"/components/1/props/fields/0/hint","value":"a~b/c"}
        ])))
        .unwrap();
    assert!(matches!(
        update,
        Update::Patch {
            version: 2,
            base_version: 1,
            ..
        }
    ));
    assert_eq!(s.document()["components"][0]["props"]["value"], "Hi");
    assert_eq!(s.document()["components"][2]["type"], "chart");
    // A failing op leaves the document untouched.
    let before = s.document().clone();
    let err = s
        .apply_patch(
            None,
            &patch(json!([
                {"op":"replace","path":"/components/0/props/value","value":"changed"},
                {"op":"remove","path":"/components/9"}
            ])),
        )
        .unwrap_err();
    assert!(matches!(err, A2uiError::Conflict { index: 1, .. }), "{err}");
    assert_eq!(s.document(), &before);
    assert_eq!(s.version(), 2);
    // Stale base.
    assert_eq!(
        s.apply_patch(
            Some(1),
            &patch(json!([{"op":"remove","path":"/components/2"}]))
        )
        .unwrap_err(),
        A2uiError::Stale {
            base: 1,
            current: 2
        }
    );
    // Escaped pointer tokens.
    let mut t = Surface::new(json!({"v":1,"surface":"s","components":[{"id":"x","type":"text","props":{"a/b":1,"c~d":2}}]})).unwrap();
    t.apply_patch(None, &patch(json!([{"op":"remove","path":"/components/0/props/a~1b"},{"op":"remove","path":"/components/0/props/c~0d"}]))).unwrap();
    assert_eq!(t.document()["components"][0]["props"], json!({}));
}

#[test]
fn every_limit_is_enforced_just_over_it() {
    let ok_ops: Vec<Value> = (0..MAX_OPS)
        .map(|_| json!({"op":"replace","path":"/surface","value":"demo"}))
        .collect();
    assert!(parse_patch(&patch(Value::Array(ok_ops.clone()))).is_ok());
    let mut over = ok_ops;
    over.push(json!({"op":"replace","path":"/surface","value":"demo"}));
    assert!(matches!(
        parse_patch(&patch(Value::Array(over))),
        Err(A2uiError::Limit(_))
    ));

    let path_ok = format!("/{}", "a".repeat(MAX_PATH - 1));
    assert!(parse_pointer(&path_ok).is_ok());
    assert!(matches!(
        parse_pointer(&format!("{path_ok}a")),
        Err(A2uiError::Limit(_))
    ));

    let big = "x".repeat(MAX_PATCH_BYTES);
    assert!(matches!(
        parse_patch(&patch(json!([{"op":"add","path":"/p","value":big}]))),
        Err(A2uiError::Limit(_))
    ));

    let mut deep = json!(1);
    for _ in 0..MAX_DEPTH {
        deep = json!([deep]);
    }
    assert!(matches!(
        parse_patch(&patch(json!([{"op":"add","path":"/p","value":deep}]))),
        Err(A2uiError::Limit(_))
    ));

    let components = |n: usize| -> Value {
        Value::Array(
            (0..n)
                .map(|i| json!({"id":format!("c{i}"),"type":"text","props":{}}))
                .collect(),
        )
    };
    assert!(validate_document(
        &json!({"v":1,"surface":"s","components":components(MAX_COMPONENTS)})
    )
    .is_ok());
    assert!(matches!(
        validate_document(
            &json!({"v":1,"surface":"s","components":components(MAX_COMPONENTS + 1)})
        ),
        Err(A2uiError::Limit(_))
    ));
    let huge = "m".repeat(MAX_DOCUMENT_BYTES);
    assert!(matches!(
        validate_document(
            &json!({"v":1,"surface":"s","components":[{"id":"a","type":"markdown","props":{"value":huge}}]})
        ),
        Err(A2uiError::Limit(_))
    ));
    for key in FORBIDDEN_KEYS {
        assert!(parse_pointer(&format!("/a/{key}")).is_err());
        assert!(parse_patch(&patch(json!([{"op":"add","path":"/x","value":{key:1}}]))).is_err());
    }
    for bad in [
        json!({"v":2,"ops":[{"op":"remove","path":"/a"}]}),
        json!({"v":1,"ops":[]}),
        json!({"v":1,"ops":[{"op":"move","path":"/a"}]}),
        json!({"v":1,"ops":[{"op":"remove","path":"/a","value":1}]}),
        json!({"v":1,"ops":[{"op":"add","path":"/a"}]}),
        json!({"v":1,"ops":[{"op":"add","path":"a","value":1}]}),
        json!({"v":1,"ops":[{"op":"add","path":"/~2","value":1}]}),
    ] {
        assert!(parse_patch(&bad).is_err(), "{bad}");
    }
    // Documents: unknown component type, duplicate ids, renaming the surface.
    assert!(validate_document(
        &json!({"v":1,"surface":"s","components":[{"id":"a","type":"video"}]})
    )
    .is_err());
    assert!(validate_document(&json!({"v":1,"surface":"s","components":[{"id":"a","type":"text"},{"id":"a","type":"text"}]})).is_err());
    let mut s = Surface::new(doc()).unwrap();
    assert!(s
        .apply_patch(
            None,
            &patch(json!([{"op":"replace","path":"/surface","value":"other"}]))
        )
        .is_err());
    assert!(s
        .apply_patch(
            None,
            &patch(json!([{"op":"replace","path":"/components/0/type","value":"video"}]))
        )
        .is_err());
}

/// A naive reference: the same operations on a plain JSON value through `pointer_mut`.
fn reference(doc: &Value, ops: &[(OpKind, String, Option<Value>)]) -> Option<Value> {
    let mut v = doc.clone();
    for (kind, path, value) in ops {
        let (parent_path, last) = path.rsplit_once('/')?;
        let parent = v.pointer_mut(parent_path)?;
        match parent {
            Value::Object(map) => match kind {
                OpKind::Add => {
                    map.insert(last.to_owned(), value.clone()?);
                }
                OpKind::Replace => *map.get_mut(last)? = value.clone()?,
                OpKind::Remove => {
                    map.remove(last)?;
                }
            },
            Value::Array(items) => {
                let idx = if last == "-" {
                    items.len()
                } else {
                    last.parse::<usize>().ok()?
                };
                if last != "0" && last.starts_with('0') {
                    return None;
                }
                match kind {
                    OpKind::Add if idx <= items.len() => items.insert(idx, value.clone()?),
                    OpKind::Replace if idx < items.len() && last != "-" => {
                        items[idx] = value.clone()?
                    }
                    OpKind::Remove if idx < items.len() && last != "-" => {
                        items.remove(idx);
                    }
                    _ => return None,
                }
            }
            _ => return None,
        }
    }
    Some(v)
}

fn op_strategy() -> impl Strategy<Value = (OpKind, String, Option<Value>)> {
    let kind = prop_oneof![
        Just(OpKind::Add),
        Just(OpKind::Replace),
        Just(OpKind::Remove)
    ];
    let path = prop::sample::select(vec![
        "/a", "/b", "/a/x", "/list/0", "/list/1", "/list/-", "/list/5", "/list/01", "/a/list",
        "/b/0", "/n",
    ]);
    let value = prop_oneof![
        Just(json!(1)),
        Just(json!("s")),
        Just(json!({"x": 2})),
        Just(json!([1, 2])),
    ];
    (kind, path, value).prop_map(|(k, p, v)| {
        let v = (k != OpKind::Remove).then_some(v);
        (k, p.to_owned(), v)
    })
}

proptest! {
    /// Applying a patch equals applying the same operations to a plain JSON value.
    #[test]
    fn apply_matches_the_reference(ops in proptest::collection::vec(op_strategy(), 1..8)) {
        let start = json!({"a": {"x": 1}, "list": [0, 1, 2], "n": null});
        let encoded: Vec<Value> = ops.iter().map(|(k, p, v)| {
            let op = match k { OpKind::Add => "add", OpKind::Replace => "replace", OpKind::Remove => "remove" };
            match v { Some(v) => json!({"op": op, "path": p, "value": v}), None => json!({"op": op, "path": p}) }
        }).collect();
        let parsed = parse_patch(&json!({"v":1,"ops":encoded})).unwrap();
        let ours = apply(&start, &parsed).ok();
        prop_assert_eq!(ours, reference(&start, &ops));
    }
}
