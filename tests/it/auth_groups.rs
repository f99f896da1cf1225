//! Many groups (docs/security.md, "Many groups"): erin, a member of 300 project groups at the
//! real OpenID provider, logs in through hubgate; the session cookie keeps only the groups the
//! configuration uses, stays far below the 4 KiB browsers accept, and group policies still
//! decide as before. A configuration that would need more than the cap refuses the login
//! clearly instead of setting a cookie the browser would drop.

use crate::auth_step_up::{env, through_idp};
use crate::support::auth_proxy::*;
use crate::support::browser::*;
use crate::support::oidc::*;
use crate::support::Req;
use std::time::Duration;

const CLIMATE: &str = "project-hpc-00123-climate-modelling";

fn group(i: usize) -> String {
    format!("project-hpc-{i:05}-climate-modelling")
}

#[test]
fn three_hundred_groups_keep_a_small_cookie_and_group_policies_work() {
    let env = env(false, |c| {
        c.policies.push((
            "/services/climate/".into(),
            "group".into(),
            vec![CLIMATE.into()],
        ));
        c.policies.push((
            "/services/other/".into(),
            "group".into(),
            vec!["not-erins-group".into()],
        ));
    });
    // The provider's ID token for erin is really that large (over the 8 KiB Bearer limit).
    let tokens = env.idp.login(&LoginAs::user("erin"));
    let claims = crate::support::jwt::jwt_claims(&tokens.id_token);
    assert_eq!(claims["groups"].as_array().map(Vec::len), Some(301));
    assert!(tokens.id_token.len() > 8192, "{}", tokens.id_token.len());

    let mut b = Browser::html();
    let start = login_start(&mut b, env.port, "/services/climate/");
    let r = through_idp(&env, &mut b, &start.auth_url, &LoginAs::user("erin"));
    assert_eq!(r.status, 302, "{}", r.describe());
    let raw = r
        .header_all("set-cookie")
        .into_iter()
        .find(|c| c.starts_with(SESSION_COOKIE))
        .expect("session cookie")
        .to_string();
    assert!(
        raw.len() < 1024,
        "Set-Cookie is {} bytes with 300 groups",
        raw.len()
    );
    assert!(raw.len() < 4096);

    // The group policy still decides; upstream sees the groups hubgate kept.
    let r = b.send(env.port, Req::get("/services/climate/"));
    assert_eq!(r.status, 200, "{}", r.describe());
    let rec = env.services.last().unwrap();
    assert_eq!(rec.header("x-auth-request-user").as_deref(), Some("erin"));
    assert_eq!(
        rec.header("x-auth-request-groups").as_deref(),
        Some(CLIMATE)
    );
    env.services.clear();
    let r = b.send(env.port, Req::get("/services/other/"));
    assert_eq!(r.status, 403, "{}", r.describe());
    assert_eq!(env.services.count(), 0);
}

#[test]
fn a_session_over_the_cap_is_refused_clearly() {
    // A configuration naming every one of erin's groups: no filter can make that fit.
    let env = env(false, |c| {
        c.policies.push((
            "/services/climate/".into(),
            "group".into(),
            (0..300).map(group).collect(),
        ));
    });
    let before = env.px.denials("session_too_large");
    let mut b = Browser::html();
    let start = login_start(&mut b, env.port, "/services/climate/");
    let r = through_idp(&env, &mut b, &start.auth_url, &LoginAs::user("erin"));
    assert_eq!(r.status, 403, "{}", r.describe());
    assert!(r.header("location").is_none());
    assert!(r.text().contains("contact the service"), "{}", r.describe());
    if let Some(c) = set_cookie(&r, SESSION_COOKIE) {
        assert!(c.is_removal(), "{c:?}");
    }
    assert_eq!(env.px.denials("session_too_large"), before + 1.0);
    env.px
        .wait_for_output("session cookie would be", Duration::from_secs(5));
    // alice, with one group, still logs in under the same configuration.
    let mut b = Browser::html();
    let start = login_start(&mut b, env.port, "/user/alice/");
    let r = through_idp(&env, &mut b, &start.auth_url, &LoginAs::user("alice"));
    assert_eq!(r.status, 302, "{}", r.describe());
}
