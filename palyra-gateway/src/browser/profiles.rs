//! Browser profiles: named, per principal, persisted in one JSON file written atomically. A
//! profile with persistence keeps its own Chromium user-data directory (cookies, storage); a
//! private one never does. The principal is always the authenticated caller's, never a field of
//! the request. A principal over its profile limit is refused, never silently loses profiles.

use crate::store::{read_json, write_json};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Mutex;

/// Longest profile name, in bytes.
pub const MAX_NAME: usize = 64;

/// One profile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Profile {
    /// Its id (a ULID).
    pub profile_id: String,
    /// Its owner.
    pub principal: String,
    /// Display name.
    pub name: String,
    /// Display colour (`#rrggbb` or empty).
    #[serde(default)]
    pub theme_color: String,
    /// Created (Unix ms).
    pub created_at_unix_ms: u64,
    /// Renamed or changed (Unix ms).
    pub updated_at_unix_ms: u64,
    /// Last used by a session (Unix ms).
    #[serde(default)]
    pub last_used_unix_ms: u64,
    /// Cookies and storage persist between sessions.
    pub persistence_enabled: bool,
    /// Private: nothing persists.
    pub private_profile: bool,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct File {
    profiles: Vec<Profile>,
    /// Active profile per principal.
    #[serde(default)]
    active: std::collections::BTreeMap<String, String>,
}

/// Why a profile call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProfileError {
    /// No such profile for this principal.
    NotFound(String),
    /// Bad input.
    Invalid(String),
    /// The principal has as many profiles as it may.
    Exhausted(String),
    /// The file could not be written.
    Store(String),
}

/// The profiles of every principal.
#[derive(Debug)]
pub struct Profiles {
    path: PathBuf,
    max_per_principal: usize,
    file: Mutex<File>,
}

fn check_name(name: &str) -> Result<String, ProfileError> {
    let name = name.trim();
    if name.is_empty() || name.len() > MAX_NAME || name.chars().any(char::is_control) {
        return Err(ProfileError::Invalid(format!(
            "a profile name is 1 to {MAX_NAME} bytes of printable text"
        )));
    }
    Ok(name.to_owned())
}

fn check_color(color: &str) -> Result<String, ProfileError> {
    let ok = color.is_empty()
        || (color.len() == 7
            && color.starts_with('#')
            && color[1..].bytes().all(|b| b.is_ascii_hexdigit()));
    if !ok {
        return Err(ProfileError::Invalid(format!(
            "theme_color {color:?} must be empty or #rrggbb"
        )));
    }
    Ok(color.to_ascii_lowercase())
}

impl Profiles {
    /// Loads `path` (absent: no profiles).
    pub fn open(path: PathBuf, max_per_principal: usize) -> std::io::Result<Self> {
        let file = read_json::<File>(&path)
            .map_err(|e| std::io::Error::other(e.to_string()))?
            .unwrap_or_default();
        Ok(Self {
            path,
            max_per_principal,
            file: Mutex::new(file),
        })
    }

    fn change<T>(
        &self,
        f: impl FnOnce(&mut File) -> Result<T, ProfileError>,
    ) -> Result<T, ProfileError> {
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        let before = serde_json::to_vec(&*file).unwrap_or_default();
        let out = f(&mut file)?;
        if let Err(e) = write_json(&self.path, &*file) {
            // Not durable: undo, so memory and disk agree.
            if let Ok(old) = serde_json::from_slice(&before) {
                *file = old;
            }
            return Err(ProfileError::Store(e.to_string()));
        }
        Ok(out)
    }

    /// `principal`'s profiles, oldest first, and its active profile's id.
    pub fn list(&self, principal: &str) -> (Vec<Profile>, String) {
        let file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        let list = file
            .profiles
            .iter()
            .filter(|p| p.principal == principal)
            .cloned()
            .collect();
        (
            list,
            file.active.get(principal).cloned().unwrap_or_default(),
        )
    }

    /// One of `principal`'s profiles.
    pub fn get(&self, principal: &str, id: &str) -> Option<Profile> {
        self.list(principal)
            .0
            .into_iter()
            .find(|p| p.profile_id == id)
    }

    /// `principal`'s active profile.
    pub fn active(&self, principal: &str) -> Option<Profile> {
        let (list, active) = self.list(principal);
        list.into_iter().find(|p| p.profile_id == active)
    }

    /// Creates a profile; the principal's first becomes active.
    pub fn create(
        &self,
        principal: &str,
        name: &str,
        theme_color: &str,
        persistence_enabled: bool,
        private_profile: bool,
        now_ms: u64,
    ) -> Result<Profile, ProfileError> {
        let name = check_name(name)?;
        let theme_color = check_color(theme_color)?;
        if persistence_enabled && private_profile {
            return Err(ProfileError::Invalid(
                "a private profile cannot persist its state".into(),
            ));
        }
        let max = self.max_per_principal;
        self.change(|file| {
            let owned = file.profiles.iter().filter(|p| p.principal == principal);
            if owned.clone().count() >= max {
                return Err(ProfileError::Exhausted(format!(
                    "{principal} has {max} profiles, the limit; delete one first"
                )));
            }
            if owned.clone().any(|p| p.name == name) {
                return Err(ProfileError::Invalid(format!(
                    "{principal} already has a profile named {name:?}"
                )));
            }
            let profile = Profile {
                profile_id: ulid::Ulid::new().to_string(),
                principal: principal.to_owned(),
                name,
                theme_color,
                created_at_unix_ms: now_ms,
                updated_at_unix_ms: now_ms,
                last_used_unix_ms: 0,
                persistence_enabled,
                private_profile,
            };
            file.active
                .entry(principal.to_owned())
                .or_insert_with(|| profile.profile_id.clone());
            file.profiles.push(profile.clone());
            Ok(profile)
        })
    }

    /// Renames one of `principal`'s profiles.
    pub fn rename(
        &self,
        principal: &str,
        id: &str,
        name: &str,
        now_ms: u64,
    ) -> Result<Profile, ProfileError> {
        let name = check_name(name)?;
        self.change(|file| {
            if file
                .profiles
                .iter()
                .any(|p| p.principal == principal && p.name == name && p.profile_id != id)
            {
                return Err(ProfileError::Invalid(format!(
                    "{principal} already has a profile named {name:?}"
                )));
            }
            let profile = file
                .profiles
                .iter_mut()
                .find(|p| p.principal == principal && p.profile_id == id)
                .ok_or_else(|| ProfileError::NotFound(format!("profile {id} not found")))?;
            profile.name = name;
            profile.updated_at_unix_ms = now_ms;
            Ok(profile.clone())
        })
    }

    /// Deletes one of `principal`'s profiles; returns the active profile's id afterwards.
    pub fn delete(&self, principal: &str, id: &str) -> Result<String, ProfileError> {
        self.change(|file| {
            let before = file.profiles.len();
            file.profiles
                .retain(|p| !(p.principal == principal && p.profile_id == id));
            if file.profiles.len() == before {
                return Err(ProfileError::NotFound(format!("profile {id} not found")));
            }
            if file.active.get(principal).is_some_and(|a| a == id) {
                match file.profiles.iter().find(|p| p.principal == principal) {
                    Some(next) => {
                        let next = next.profile_id.clone();
                        file.active.insert(principal.to_owned(), next);
                    }
                    None => {
                        file.active.remove(principal);
                    }
                }
            }
            Ok(file.active.get(principal).cloned().unwrap_or_default())
        })
    }

    /// Makes one of `principal`'s profiles its active one.
    pub fn set_active(&self, principal: &str, id: &str) -> Result<Profile, ProfileError> {
        self.change(|file| {
            let profile = file
                .profiles
                .iter()
                .find(|p| p.principal == principal && p.profile_id == id)
                .cloned()
                .ok_or_else(|| ProfileError::NotFound(format!("profile {id} not found")))?;
            file.active.insert(principal.to_owned(), id.to_owned());
            Ok(profile)
        })
    }

    /// Records that a session used a profile.
    pub fn touch(&self, principal: &str, id: &str, now_ms: u64) {
        let _ = self.change(|file| {
            if let Some(p) = file
                .profiles
                .iter_mut()
                .find(|p| p.principal == principal && p.profile_id == id)
            {
                p.last_used_unix_ms = now_ms;
            }
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_persist_per_principal_and_the_limit_refuses() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("profiles.json");
        let profiles = Profiles::open(path.clone(), 2).unwrap();
        let a = profiles
            .create("user:a", "work", "#AABBCC", true, false, 1)
            .unwrap();
        assert_eq!(a.theme_color, "#aabbcc");
        let b = profiles
            .create("user:a", "home", "", false, false, 2)
            .unwrap();
        assert!(matches!(
            profiles.create("user:a", "third", "", false, false, 3),
            Err(ProfileError::Exhausted(_))
        ));
        assert!(matches!(
            profiles.create("user:b", "x", "red", false, false, 3),
            Err(ProfileError::Invalid(_))
        ));
        // Another principal cannot see, rename or delete them.
        assert!(profiles.get("user:b", &a.profile_id).is_none());
        assert!(matches!(
            profiles.rename("user:b", &a.profile_id, "mine", 4),
            Err(ProfileError::NotFound(_))
        ));
        assert_eq!(profiles.active("user:a").unwrap().profile_id, a.profile_id);
        profiles.set_active("user:a", &b.profile_id).unwrap();
        profiles
            .rename("user:a", &b.profile_id, "house", 5)
            .unwrap();

        let reopened = Profiles::open(path, 2).unwrap();
        let (list, active) = reopened.list("user:a");
        assert_eq!(active, b.profile_id);
        assert_eq!(
            list.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
            ["work", "house"]
        );
        assert_eq!(
            reopened.delete("user:a", &b.profile_id).unwrap(),
            a.profile_id
        );
        assert!(matches!(
            reopened.delete("user:a", &b.profile_id),
            Err(ProfileError::NotFound(_))
        ));
    }
}
