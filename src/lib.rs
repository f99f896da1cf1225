//! hubgate: an authenticating reverse proxy for JupyterHub, a drop-in replacement for
//! configurable-http-proxy, built on pingora.
//!
//! `main.rs` parses the command line into a [`config::Config`]; [`server::Hubgate`] builds
//! and runs every service from it.

pub mod api;
pub mod auth;
pub mod canonical;
pub mod config;
pub mod logging;
pub mod metrics;
pub mod net;
pub mod proxy;
pub mod reload;
pub mod routes;
pub mod server;
pub mod time;
pub mod tls;
pub mod web;

/// Internals the fuzz targets (`fuzz/`) drive directly. Not an API: it exists so that parsers
/// private to their modules can be fuzzed without making those modules public.
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::api::{parse_body, post_key, route_data, route_path};
    pub use crate::auth::session::{cookie_value, strip_own_cookies, CookieKey, SessionClaims};
    pub use crate::auth::verify::{inspect, Unverified};
    pub use crate::auth::{bearer_token, parse_key_set};
    pub use crate::proxy::frames::FrameCounter;
}

/// The module layering (docs/design.md, "Module map"): leaves import no other hubgate module,
/// and arrows point one way: `proxy` → `auth` → leaves; nothing but the wiring imports `proxy`.
#[cfg(test)]
mod layering {
    use std::path::{Path, PathBuf};

    fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("source dir readable") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                rust_files(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }

    /// The crate modules a source file names (`crate::x`), outside its own.
    fn imports(file: &Path) -> Vec<String> {
        let text = std::fs::read_to_string(file).expect("source readable");
        let mut out = Vec::new();
        for (i, _) in text.match_indices("crate::") {
            let rest = &text[i + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() && !out.contains(&name) {
                out.push(name);
            }
        }
        out
    }

    fn module_of(src: &Path, file: &Path) -> String {
        let rel = file.strip_prefix(src).expect("under src");
        let first = rel.components().next().expect("a component");
        first
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_string()
    }

    #[test]
    fn leaves_import_nothing_and_nothing_imports_proxy() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        rust_files(&src, &mut files);
        assert!(files.len() > 20, "found the sources");
        const LEAVES: [&str; 4] = ["time", "web", "net", "canonical"];
        // May import `proxy`: the wiring that builds and reloads it.
        const WIRING: [&str; 4] = ["proxy", "server", "reload", "lib"];
        let mut wrong = Vec::new();
        for file in &files {
            let module = module_of(&src, file);
            if module == "bin" || module == "main" {
                continue;
            }
            for imported in imports(file) {
                if imported == module {
                    continue;
                }
                if LEAVES.contains(&module.as_str()) {
                    wrong.push(format!(
                        "{}: leaf `{module}` imports `{imported}`",
                        file.display()
                    ));
                }
                if imported == "proxy" && !WIRING.contains(&module.as_str()) {
                    wrong.push(format!("{}: `{module}` imports `proxy`", file.display()));
                }
                if module == "routes" && imported == "auth" {
                    wrong.push(format!("{}: `routes` imports `auth`", file.display()));
                }
            }
        }
        assert!(wrong.is_empty(), "layering broken:\n{}", wrong.join("\n"));
    }
}
