//! The process logger: CHP's line format, `{time} [hubgate] {level}: {message}`, on stdout.
//!
//! pingora's own chatter (server start-up steps, per-connection notes) is kept at warn and
//! above unless the log level is debug, so the log reads like CHP's: API calls, route
//! changes, proxy errors.

use std::io::Write;

use log::{LevelFilter, Log, Metadata, Record};

struct Logger {
    level: LevelFilter,
    framework_level: LevelFilter,
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        let limit = if metadata.target().starts_with("pingora") {
            self.framework_level
        } else {
            self.level
        };
        metadata.level() <= limit
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        // Clients that drop a TLS handshake (scanners, health probes, our own readiness
        // check) are not errors of the proxy.
        if record.target().starts_with("pingora")
            && self.level < LevelFilter::Debug
            && record.args().as_str().map_or_else(
                || {
                    record
                        .args()
                        .to_string()
                        .starts_with("Downstream handshake error")
                },
                |s| s.starts_with("Downstream handshake error"),
            )
        {
            return;
        }
        // A client closing its connection before sending a request is not an error either.
        if record.target().starts_with("pingora")
            && self.level < LevelFilter::Debug
            && record
                .args()
                .to_string()
                .contains("Downstream ConnectionClosed context: while reading request headers")
        {
            return;
        }
        let level = match record.level() {
            log::Level::Error => "error",
            log::Level::Warn => "warn",
            log::Level::Info => "info",
            log::Level::Debug => "debug",
            log::Level::Trace => "trace",
        };
        let now = crate::time::iso_ms(crate::time::now_ms());
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{now} [hubgate] {level}: {}", record.args());
    }

    fn flush(&self) {
        let _ = std::io::stdout().flush();
    }
}

/// Installs the logger; later calls (tests building several servers) keep the first one.
pub fn init(level: LevelFilter) {
    let framework_level = if level >= LevelFilter::Debug {
        level
    } else {
        LevelFilter::Warn
    };
    if log::set_boxed_logger(Box::new(Logger {
        level,
        framework_level,
    }))
    .is_ok()
    {
        log::set_max_level(level.max(framework_level));
    }
}
