//! Whether the worker can take its pool's tasks: it is ready once it sees its pool's queue
//! consumer. When it cannot, this says why in words a user can act on (the likely cause
//! first: a leaf node reached without `--js-domain`, or a pool not registered yet), shows it
//! in every heartbeat, and logs it once per change with a reminder every minute.

use shoal_runtime::nats::ConsumerLookupError;
use shoal_shared::PoolName;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often an unchanged reason is logged again.
pub const REMIND_EVERY: Duration = Duration::from_secs(60);

/// Why the pool's queue consumer could not be seen, as far as the broker's answer tells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Blocked {
    /// Nothing answers JetStream API requests on this connection (no responders).
    NoJetStream,
    /// JetStream did not answer in time.
    TimedOut,
    /// The tasks stream does not exist where JetStream answered.
    NoStream,
    /// The stream exists; the pool's consumer does not: the pool is not registered.
    NoConsumer,
    /// Anything else, as the broker said it.
    Other(String),
}

impl Blocked {
    /// Classifies a failed consumer lookup.
    pub fn of(error: &ConsumerLookupError) -> Blocked {
        use async_nats::jetstream::context::{
            ConsumerInfoError, ConsumerInfoErrorKind, GetStreamErrorKind, RequestError,
            RequestErrorKind,
        };
        match error {
            ConsumerLookupError::Stream(e) => match e.kind() {
                GetStreamErrorKind::JetStream(js)
                    if js.error_code() == async_nats::jetstream::ErrorCode::STREAM_NOT_FOUND =>
                {
                    Blocked::NoStream
                }
                GetStreamErrorKind::Request => {
                    let kind = std::error::Error::source(e)
                        .and_then(|s| s.downcast_ref::<RequestError>())
                        .map(RequestError::kind);
                    match kind {
                        Some(RequestErrorKind::NoResponders) => Blocked::NoJetStream,
                        Some(RequestErrorKind::TimedOut) => Blocked::TimedOut,
                        _ => Blocked::Other(error.to_string()),
                    }
                }
                _ => Blocked::Other(error.to_string()),
            },
            ConsumerLookupError::Consumer(e) => {
                match e
                    .downcast_ref::<ConsumerInfoError>()
                    .map(ConsumerInfoError::kind)
                {
                    Some(ConsumerInfoErrorKind::NotFound) => Blocked::NoConsumer,
                    Some(ConsumerInfoErrorKind::StreamNotFound) => Blocked::NoStream,
                    Some(ConsumerInfoErrorKind::NoResponders) => Blocked::NoJetStream,
                    Some(ConsumerInfoErrorKind::TimedOut) => Blocked::TimedOut,
                    _ => Blocked::Other(error.to_string()),
                }
            }
        }
    }
}

/// What the worker knows of the server it is connected to and of its own settings, for
/// naming the likely cause.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Where {
    pub pool: PoolName,
    /// The stream of the tasks (`SHOAL_TASKS`).
    pub stream: String,
    /// `--js-domain`, if given.
    pub js_domain: Option<String>,
    /// The connected server has JetStream of its own (its INFO says so).
    pub server_has_jetstream: bool,
}

/// The reason a worker is not ready, as it is shown in `shoal workers` and logged.
pub fn reason(blocked: &Blocked, at: &Where) -> String {
    let pool = &at.pool;
    let cause = match (blocked, &at.js_domain) {
        // Behind a secured leaf node the lookup is refused (the leaf denies `$JS.API.>`)
        // and times out rather than finding no responders: the same cause.
        (Blocked::NoJetStream | Blocked::TimedOut, None) if !at.server_has_jetstream => {
            "JetStream answers no requests here: this looks like a leaf node (the server has no \
             JetStream of its own); start the worker with --js-domain <hub's domain> (e.g. hub)"
                .to_owned()
        }
        (Blocked::NoJetStream, None) => {
            "JetStream answers no requests here; if this server is a leaf node, start the worker \
             with --js-domain <hub's domain> (e.g. hub)"
                .to_owned()
        }
        (Blocked::NoJetStream, Some(domain)) => format!(
            "no JetStream of domain \"{domain}\" answers here; check that --js-domain names the \
             hub's JetStream domain and that the leaf node is connected to the hub"
        ),
        (Blocked::TimedOut, _) => "JetStream did not answer in time (broker busy or \
             unreachable, or a permission for the JetStream API is missing); retrying"
            .to_owned(),
        (Blocked::NoStream, _) => format!(
            "stream {} does not exist here; has a planner started on this broker{}?",
            at.stream,
            at.js_domain
                .as_ref()
                .map(|d| format!(" (JetStream domain \"{d}\")"))
                .unwrap_or_default()
        ),
        (Blocked::NoConsumer, _) => {
            return format!(
                "pool \"{pool}\" has no queue consumer yet; register it with `shoal pool add {pool}`"
            );
        }
        (Blocked::Other(error), _) => error.clone(),
    };
    format!("cannot see the queue consumer of pool \"{pool}\": {cause}")
}

/// The worker's readiness, shared by the pull loop (which sets it) and heartbeats (which
/// report it). Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Readiness {
    inner: Arc<Mutex<State>>,
}

#[derive(Debug, Default)]
struct State {
    /// `None` until the first lookup ended.
    ready: Option<bool>,
    reason: Option<String>,
    /// When the current reason was last logged.
    logged_at: Option<Instant>,
}

impl Readiness {
    /// `(ready, reason)` for a heartbeat; `ready` is `None` before the first lookup ended.
    pub fn get(&self) -> (Option<bool>, Option<String>) {
        self.inner
            .lock()
            .map(|s| (s.ready, s.reason.clone()))
            .unwrap_or((None, None))
    }

    /// The pool's queue consumer is seen. Returns whether the worker was not ready before.
    pub fn ready(&self) -> bool {
        let Ok(mut s) = self.inner.lock() else {
            return false;
        };
        let was_not_ready = s.ready == Some(false);
        *s = State {
            ready: Some(true),
            reason: None,
            logged_at: None,
        };
        was_not_ready
    }

    /// The worker is not ready for `reason`. Returns whether to log it now: the reason
    /// changed, or it was last logged [`REMIND_EVERY`] ago.
    pub fn not_ready(&self, reason: String, now: Instant) -> bool {
        let Ok(mut s) = self.inner.lock() else {
            return false;
        };
        let changed = s.reason.as_deref() != Some(reason.as_str());
        let due = s
            .logged_at
            .is_none_or(|at| now.duration_since(at) >= REMIND_EVERY);
        s.ready = Some(false);
        s.reason = Some(reason);
        if changed || due {
            s.logged_at = Some(now);
        }
        changed || due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(js_domain: Option<&str>, server_has_jetstream: bool) -> Where {
        Where {
            pool: PoolName::parse("eu-west").expect("valid"),
            stream: "SHOAL_TASKS".into(),
            js_domain: js_domain.map(str::to_owned),
            server_has_jetstream,
        }
    }

    #[test]
    fn no_jetstream_on_a_server_without_its_own_names_the_domain_flag() {
        let r = reason(&Blocked::NoJetStream, &at(None, false));
        assert!(r.contains("pool \"eu-west\""), "{r}");
        assert!(r.contains("looks like a leaf node"), "{r}");
        assert!(r.contains("--js-domain <hub's domain> (e.g. hub)"), "{r}");
    }

    #[test]
    fn no_jetstream_with_a_domain_given_says_to_check_it() {
        let r = reason(&Blocked::NoJetStream, &at(Some("hubb"), false));
        assert!(r.contains("domain \"hubb\""), "{r}");
    }

    #[test]
    fn the_brokers_answers_are_told_apart() {
        use async_nats::jetstream::context::{
            ConsumerInfoError, ConsumerInfoErrorKind, GetStreamError, GetStreamErrorKind,
            RequestError, RequestErrorKind,
        };
        let stream = |kind| {
            ConsumerLookupError::Stream(GetStreamError::with_source(
                GetStreamErrorKind::Request,
                RequestError::new(kind),
            ))
        };
        let consumer = |kind| ConsumerLookupError::Consumer(Box::new(ConsumerInfoError::new(kind)));
        assert_eq!(
            Blocked::of(&stream(RequestErrorKind::NoResponders)),
            Blocked::NoJetStream
        );
        assert_eq!(
            Blocked::of(&stream(RequestErrorKind::TimedOut)),
            Blocked::TimedOut
        );
        assert_eq!(
            Blocked::of(&consumer(ConsumerInfoErrorKind::NotFound)),
            Blocked::NoConsumer
        );
        assert_eq!(
            Blocked::of(&consumer(ConsumerInfoErrorKind::NoResponders)),
            Blocked::NoJetStream
        );
        assert!(matches!(
            Blocked::of(&consumer(ConsumerInfoErrorKind::Offline)),
            Blocked::Other(_)
        ));
    }

    #[test]
    fn a_missing_consumer_says_to_register_the_pool() {
        let r = reason(&Blocked::NoConsumer, &at(None, true));
        assert_eq!(
            r,
            "pool \"eu-west\" has no queue consumer yet; register it with `shoal pool add eu-west`"
        );
    }

    #[test]
    fn a_reason_is_logged_when_it_changes_and_then_once_a_minute() {
        let r = Readiness::default();
        assert_eq!(r.get(), (None, None));
        let t0 = Instant::now();
        assert!(r.not_ready("a".into(), t0));
        assert!(!r.not_ready("a".into(), t0 + Duration::from_secs(1)));
        assert!(!r.not_ready("a".into(), t0 + Duration::from_secs(59)));
        assert!(r.not_ready("a".into(), t0 + REMIND_EVERY));
        assert!(r.not_ready("b".into(), t0 + REMIND_EVERY + Duration::from_secs(1)));
        assert_eq!(r.get(), (Some(false), Some("b".into())));
        assert!(r.ready());
        assert_eq!(r.get(), (Some(true), None));
        assert!(!r.ready());
    }
}
