//! What a new user sees first: `--help` says what each program is for, and an error is one line
//! that names its cause once.

use std::process::Command;

fn run(binary: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(binary).args(args).output().expect("run");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn help_says_what_the_programs_are_for() {
    let (code, out, _) = run(env!("CARGO_BIN_EXE_palyra"), &["--help"]);
    assert_eq!(code, 0);
    let first = out.lines().next().unwrap_or("");
    assert!(
        first.starts_with("palyra: the command line of a Palyra gateway"),
        "{first}"
    );
    assert!(
        !out.contains("runtime adapter") && !out.contains("driver"),
        "{out}"
    );
    let (code, out, _) = run(env!("CARGO_BIN_EXE_palyrad"), &["--help"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("The Palyra gateway daemon"), "{out}");
}

#[test]
fn an_error_names_its_cause_once() {
    let (code, _, err) = run(
        env!("CARGO_BIN_EXE_palyra"),
        &[
            "node",
            "health",
            "--identity",
            "/missing/identity",
            "--gateway",
            "127.0.0.1:1",
        ],
    );
    assert_eq!(code, 1);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("palyra: error: "), "{err}");
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");
}
