//! Which of a user's groups a session cookie keeps.
//!
//! HPC users belong to dozens or hundreds of project groups; carried whole, they push the
//! session cookie past the ~4 KiB browsers accept, the browser drops it and the user loops
//! through the login. The cookie keeps only the groups this configuration can ever use — the
//! issuer's `admin-groups` and the groups named by `[[auth.policies]]` — so its size depends
//! on the configuration, not on the user. Bearer tokens are not affected (they carry their own
//! groups). See docs/security.md, "Many groups".

use crate::config::auth::{Access, AuthConfig};

/// The largest session cookie value hubgate sets. Browsers keep cookies up to 4096 bytes of
/// name, value and attributes; this leaves room for the name (22 bytes) and the attributes
/// (~60 bytes) with a margin.
pub const MAX_SESSION_COOKIE_BYTES: usize = 3584;

/// Whether a policy or the issuer's admin rule can ever look at `group`.
fn used(config: &AuthConfig, issuer: usize, group: &str) -> bool {
    config
        .issuers
        .get(issuer)
        .is_some_and(|i| i.admin_groups.iter().any(|g| g == group))
        || config.policies.iter().any(|p| match &p.access {
            Access::Group(groups) => groups.iter().any(|g| g == group),
            _ => false,
        })
}

/// The groups of a user of `issuer` that a session cookie keeps: those the configuration uses,
/// in the token's order, each once.
pub fn session_groups(config: &AuthConfig, issuer: usize, groups: &[String]) -> Vec<String> {
    let mut kept: Vec<String> = Vec::new();
    for g in groups {
        if used(config, issuer, g) && !kept.contains(g) {
            kept.push(g.clone());
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::test_support::auth_from;

    fn many(n: usize) -> Vec<String> {
        (0..n)
            .map(|i| format!("project-hpc-{i:05}-climate-modelling"))
            .collect()
    }

    #[test]
    fn keeps_only_groups_the_configuration_uses() {
        let auth = auth_from(
            "[[policies]]\nprefix = \"/services/climate/\"\naccess = \"group\"\ngroups = [\"project-hpc-00123-climate-modelling\", \"not-a-member\"]\n",
            "admin-groups = [\"hub-admins\"]\n",
        );
        let mut groups = many(300);
        groups.insert(7, "hub-admins".into());
        groups.push("project-hpc-00123-climate-modelling".into());
        assert_eq!(
            session_groups(&auth.config, 0, &groups),
            vec![
                "hub-admins".to_string(),
                "project-hpc-00123-climate-modelling".to_string()
            ]
        );
        // Another issuer's admin groups do not count; no policy groups: nothing kept.
        let plain = auth_from("", "");
        assert!(session_groups(&plain.config, 0, &groups).is_empty());
        assert!(session_groups(&auth.config, 5, &["hub-admins".into()]).is_empty());
    }
}
