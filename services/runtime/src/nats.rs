//! Connecting to NATS: outbound only; the first connection is retried until it succeeds or
//! the process is stopped, later ones forever in the background. Every connection problem
//! is logged naming the URL and the cause, once per change and then at most every
//! [`REMIND_EVERY`], never once per attempt. Also binding a durable pull consumer, with the
//! broker's error kept as it came.

use crate::nats_auth::{AuthError, NatsAuth, describe_refusal, log_violation};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How often a problem that has not changed is logged again.
pub const REMIND_EVERY: Duration = Duration::from_secs(30);
/// Longest wait between two first-connection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// How long a probe of an unreachable server may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Why no client was made.
#[derive(Debug)]
pub enum ConnectError {
    /// The URL cannot be used at all; retrying does not help.
    InvalidUrl { url: String, cause: String },
    /// Shutdown came before the first connection; `last` is why it had not succeeded yet.
    Stopped { url: String, last: Option<String> },
    /// The credentials cannot be read; retrying does not help.
    Credentials(AuthError),
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::InvalidUrl { url, cause } => {
                write!(f, "invalid NATS URL {url:?}: {cause}")
            }
            ConnectError::Stopped {
                url,
                last: Some(last),
            } => write!(
                f,
                "stopped before connecting to NATS at {url} (last attempt: {last})"
            ),
            ConnectError::Stopped { url, last: None } => {
                write!(f, "stopped before connecting to NATS at {url}")
            }
            ConnectError::Credentials(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for ConnectError {}

/// Connects to `url` as `name` without credentials or TLS (logged as a loud warning); see
/// [`connect_as`].
///
/// # Errors
/// An invalid URL, or shutdown before the first connection.
pub async fn connect(
    url: &str,
    name: &str,
    inbox_prefix: Option<String>,
    shutdown: &CancellationToken,
    on_problem: impl FnMut(&str),
) -> Result<async_nats::Client, ConnectError> {
    connect_as(
        url,
        name,
        &NatsAuth::default(),
        inbox_prefix,
        shutdown,
        on_problem,
    )
    .await
}

/// Connects to `url` (one server, or every server of a cluster comma-separated) as `name`
/// with `auth`, retrying until connected or `shutdown`. With
/// `inbox_prefix`, replies come on that prefix only, so per-worker permissions can allow a
/// worker exactly its own inboxes. `on_problem` hears each failed attempt's cause, as
/// logged (`cannot reach NATS at <url>: <cause>`), so a process can show it elsewhere too.
/// Refused credentials, a missing client certificate and every permission violation later
/// are logged naming the identity.
///
/// # Errors
/// An invalid URL, unreadable credentials, or shutdown before the first connection.
pub async fn connect_as(
    url: &str,
    name: &str,
    auth: &NatsAuth,
    inbox_prefix: Option<String>,
    shutdown: &CancellationToken,
    mut on_problem: impl FnMut(&str),
) -> Result<async_nats::Client, ConnectError> {
    if auth.is_open() {
        tracing::warn!(
            client = %name,
            "INSECURE: connecting to NATS at {url} without credentials or TLS; anyone who reaches \
             this broker can read and forge shoal's messages. Give --nats-nkey, --nats-ca, \
             --nats-cert and --nats-key from a trust bundle (`shoal-planner nats-config`)"
        );
    }
    let mut backoff = Duration::from_millis(100);
    let mut said: Option<(String, Instant)> = None;
    loop {
        let (options, identity) =
            options(url, name, auth, inbox_prefix.clone()).map_err(ConnectError::Credentials)?;
        // A comma-separated list names every server of a cluster: the client connects to
        // one and moves to another when it is lost.
        let servers: Vec<&str> = url
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        let attempt = options.connect(servers);
        let stopped = |said: &Option<(String, Instant)>| ConnectError::Stopped {
            url: url.to_owned(),
            last: said.as_ref().map(|(s, _)| s.clone()),
        };
        let result = tokio::select! {
            r = attempt => r,
            () = shutdown.cancelled() => return Err(stopped(&said)),
        };
        let e = match result {
            Ok(client) => {
                log_connected(&client, url, &identity);
                return Ok(client);
            }
            Err(e) => e,
        };
        if e.kind() == async_nats::ConnectErrorKind::ServerParse {
            let cause = e.to_string();
            return Err(ConnectError::InvalidUrl {
                url: url.to_owned(),
                cause,
            });
        }
        let cause = describe_refusal(&e, auth, &identity).unwrap_or_else(|| describe(&e));
        let problem = format!("cannot reach NATS at {url}: {cause}");
        if should_say(said.as_ref(), &problem) {
            tracing::warn!(client = %name, "{problem}; retrying");
            said = Some((problem.clone(), Instant::now()));
        }
        on_problem(&problem);
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = shutdown.cancelled() => return Err(stopped(&said)),
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// A problem is logged when it is new or changed, and then every [`REMIND_EVERY`].
fn should_say(said: Option<&(String, Instant)>, problem: &str) -> bool {
    said.is_none_or(|(last, at)| last != problem || at.elapsed() >= REMIND_EVERY)
}

/// The options of every connection: reconnecting forever once connected, each event logged,
/// with `auth`'s credentials and TLS; and the identity's words for logs.
fn options(
    url: &str,
    name: &str,
    auth: &NatsAuth,
    inbox_prefix: Option<String>,
) -> Result<(async_nats::ConnectOptions, String), AuthError> {
    let options = async_nats::ConnectOptions::new()
        .name(name)
        .ping_interval(Duration::from_secs(10));
    let (mut options, identity) = auth.apply(options, name)?;
    let log = Arc::new(Reconnects {
        url: url.to_owned(),
        client: name.to_owned(),
        identity: identity.clone(),
        state: Mutex::new(None),
    });
    options = options.event_callback(move |event| {
        let log = log.clone();
        async move { log.event(event).await }
    });
    if let Some(prefix) = inbox_prefix {
        options = options.custom_inbox_prefix(prefix);
    }
    Ok((options, identity))
}

/// Says which broker the client is on: the URL, the server's name, id and version, and
/// whether it has JetStream (and in which domain).
fn log_connected(client: &async_nats::Client, url: &str, name: &str) {
    let info = client.server_info();
    let jetstream = match (&info.jetstream, &info.domain) {
        (true, Some(domain)) => format!("JetStream domain \"{domain}\""),
        (true, None) => "JetStream on".to_owned(),
        (false, _) => "JetStream not enabled on this server".to_owned(),
    };
    tracing::info!(
        client = %name, nats.url = %url, server.name = %info.server_name,
        server.id = %info.server_id, server.version = %info.version,
        "connected to NATS at {url}: server \"{}\" (nats-server {}), {jetstream}",
        info.server_name, info.version
    );
}

/// The reconnect events of one client, logged naming the URL: the loss, why it cannot
/// reconnect (once, then every [`REMIND_EVERY`]), and the return.
struct Reconnects {
    url: String,
    client: String,
    /// The identity in words (`<name> (nkey U…)`).
    identity: String,
    /// Since when the client is disconnected, and when the cause was last logged.
    state: Mutex<Option<(Instant, Option<Instant>)>>,
}

impl Reconnects {
    async fn event(&self, event: async_nats::Event) {
        let (url, client) = (&self.url, &self.client);
        match event {
            async_nats::Event::Connected => {
                let down = self.state.lock().ok().and_then(|mut s| s.take());
                if let Some((since, _)) = down {
                    let secs = since.elapsed().as_secs();
                    tracing::info!(client = %client, "reconnected to NATS at {url} after {secs} s");
                }
            }
            async_nats::Event::Disconnected => {
                if let Ok(mut s) = self.state.lock() {
                    s.get_or_insert((Instant::now(), None));
                }
                tracing::warn!(client = %client, "lost the connection to NATS at {url}; reconnecting");
            }
            async_nats::Event::ClientError(async_nats::ClientError::Other(_)) => {
                if let Some(secs) = self.due() {
                    let cause = probe(url).await;
                    tracing::warn!(client = %client, "cannot reach NATS at {url}: {cause}; retrying (disconnected for {secs} s)");
                }
            }
            async_nats::Event::ServerError(async_nats::ServerError::Other(error)) => {
                log_violation(client, &self.identity, url, &error);
            }
            async_nats::Event::ServerError(async_nats::ServerError::AuthorizationViolation) => {
                tracing::error!(client = %client, identity = %self.identity, "NATS at {url} refused the credentials of {} (authorization violation)", self.identity);
            }
            async_nats::Event::Draining | async_nats::Event::Closed => {
                tracing::info!(client = %client, event = %event, "NATS connection to {url} closing")
            }
            other => {
                tracing::warn!(client = %client, event = %other, "NATS connection event ({url})")
            }
        }
    }

    /// Whether a failed reconnect is to be logged now, and for how long the client is down.
    fn due(&self) -> Option<u64> {
        let mut state = self.state.lock().ok()?;
        let (since, said) = state.get_or_insert((Instant::now(), None));
        if said.is_some_and(|at| at.elapsed() < REMIND_EVERY) {
            return None;
        }
        *said = Some(Instant::now());
        Some(since.elapsed().as_secs())
    }
}

/// Why the first server of `url` cannot be reached: the client's reconnect events only say
/// "IO error", so the cause is found by trying a TCP connection of our own.
async fn probe(url: &str) -> String {
    let first = url.split(',').next().unwrap_or(url).trim();
    let Ok(addr) = first.parse::<async_nats::ServerAddr>() else {
        return "the address cannot be parsed".to_owned();
    };
    let connecting = tokio::net::TcpStream::connect((addr.host(), addr.port()));
    match tokio::time::timeout(PROBE_TIMEOUT, connecting).await {
        Ok(Ok(_)) => "the server accepts connections but the NATS handshake fails".to_owned(),
        Ok(Err(e)) => describe_io(&e),
        Err(_) => format!("no answer within {} s", PROBE_TIMEOUT.as_secs()),
    }
}

/// A connection error in a user's words: the OS's cause, not the client's "IO error".
fn describe(e: &async_nats::ConnectError) -> String {
    let io = std::error::Error::source(e).and_then(|s| s.downcast_ref::<std::io::Error>());
    match (e.kind(), io) {
        (_, Some(io)) => describe_io(io),
        (async_nats::ConnectErrorKind::Dns, _) => format!("cannot resolve the host name ({e})"),
        (async_nats::ConnectErrorKind::TimedOut, _) => "no answer (timed out)".to_owned(),
        (async_nats::ConnectErrorKind::AuthorizationViolation, _) => {
            "the server refused the credentials (authorization violation)".to_owned()
        }
        _ => e.to_string(),
    }
}

fn describe_io(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused => {
            "connection refused (is nats-server running there?)".to_owned()
        }
        std::io::ErrorKind::HostUnreachable | std::io::ErrorKind::NetworkUnreachable => {
            format!("no route to the host ({e})")
        }
        std::io::ErrorKind::TimedOut => "no answer (timed out)".to_owned(),
        _ => e.to_string(),
    }
}

/// Why a durable pull consumer could not be bound; the broker's own error, as it said it.
/// Either way the caller retries: the stream or consumer may not be set up yet (the planner
/// creates them), or the broker may be unreachable for now.
#[derive(Debug)]
pub enum ConsumerLookupError {
    /// The stream could not be looked up.
    Stream(async_nats::jetstream::context::GetStreamError),
    /// The stream exists; its consumer could not be looked up (async-nats boxes this error).
    Consumer(Box<dyn std::error::Error + Send + Sync>),
}

// Transparent: it displays as the broker's error and has that error's source.
impl std::fmt::Display for ConsumerLookupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConsumerLookupError::Stream(e) => e.fmt(f),
            ConsumerLookupError::Consumer(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for ConsumerLookupError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ConsumerLookupError::Stream(e) => e.source(),
            ConsumerLookupError::Consumer(e) => e.source(),
        }
    }
}

/// Binds the durable pull consumer `consumer` of `stream`.
///
/// # Errors
/// The stream or the consumer is missing, or the broker did not answer.
pub async fn pull_consumer(
    js: &async_nats::jetstream::Context,
    stream: &str,
    consumer: &str,
) -> Result<async_nats::jetstream::consumer::PullConsumer, ConsumerLookupError> {
    // No stream lookup (`STREAM.INFO`): a worker's identity may only look up its pool's
    // consumer, and a missing stream shows in the consumer's lookup as well.
    let stream = js
        .get_stream_no_info(stream)
        .await
        .map_err(ConsumerLookupError::Stream)?;
    stream
        .get_consumer::<async_nats::jetstream::consumer::pull::Config>(consumer)
        .await
        .map_err(ConsumerLookupError::Consumer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_refused_connection_is_told_with_the_url_and_the_cause_and_shutdown_ends_it() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or(1);
        let url = format!("nats://127.0.0.1:{port}");
        let shutdown = CancellationToken::new();
        let mut heard = Vec::new();
        let connecting = connect(&url, "test", None, &shutdown, |p| {
            heard.push(p.to_owned());
            shutdown.cancel();
        });
        let result = tokio::time::timeout(Duration::from_secs(10), connecting).await;
        let expected = format!(
            "cannot reach NATS at {url}: connection refused (is nats-server running there?)"
        );
        match result {
            Ok(Err(ConnectError::Stopped { url: u, last })) => {
                assert_eq!(u, url);
                assert_eq!(last.as_deref(), Some(expected.as_str()));
            }
            other => panic!("not stopped: {:?}", other.map(|r| r.map(|_| ()))),
        }
        assert_eq!(heard, vec![expected]);
    }

    #[test]
    fn a_problem_is_said_when_new_or_changed_and_then_only_every_while() {
        let now = Instant::now();
        assert!(should_say(None, "a"));
        assert!(!should_say(Some(&("a".to_owned(), now)), "a"));
        assert!(should_say(Some(&("a".to_owned(), now)), "b"));
        if let Some(long_ago) = now.checked_sub(REMIND_EVERY) {
            assert!(should_say(Some(&("a".to_owned(), long_ago)), "a"));
        }
    }
}
