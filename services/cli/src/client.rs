//! A small client of the planner's HTTP API. Answers are read into the types of
//! [`shoal_shared::api`], the ones the planner writes them from; the untyped `get`/`post`
//! stay for tests that send what no typed client would. Every request carries the client's
//! API token (`Authorization: Bearer`), when it has one; a 401 or 403 says what to do.

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use shoal_shared::api::{ErrorBody, LogCursor, LogLine, TaskLog};
use std::path::PathBuf;
use std::time::Duration;

/// An answer that was not a success.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{message} (HTTP {status})")]
    Api { status: u16, message: String },
    #[error("cannot reach the planner at {api} ({cause}); is it running? (set --api or SHOAL_API)")]
    Unreachable { api: String, cause: String },
    #[error(
        "cannot read the planner's answer to {request}: {cause}; is the planner the same version as this CLI?"
    )]
    Answer { request: String, cause: String },
}

impl ClientError {
    /// The HTTP status of an API error.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            ClientError::Unreachable { .. } | ClientError::Answer { .. } => None,
        }
    }
}

/// Talks JSON to one planner.
#[derive(Debug, Clone)]
pub struct ApiClient {
    base: String,
    http: reqwest::Client,
    /// For answers with no end (event streams): no limit on the whole request, only on
    /// silence (the planner sends a keep-alive every 15 s).
    streaming: reqwest::Client,
    /// Wait for a planner that says it is still starting (see [`ApiClient::waiting_for_start`]).
    wait_starting: bool,
    token: Token,
}

/// Where the client's API token comes from.
#[derive(Clone, Default)]
enum Token {
    #[default]
    None,
    Value(String),
    /// Read at every request: the planner may still be writing it (its first start).
    File(PathBuf),
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Token::None => f.write_str("None"),
            Token::Value(_) => f.write_str("Value(********)"),
            Token::File(p) => f.debug_tuple("File").field(p).finish(),
        }
    }
}

impl ApiClient {
    /// A client of the planner at `base`, e.g. `http://127.0.0.1:8080`.
    pub fn new(base: &str) -> ApiClient {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap_or_default();
        let streaming = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(STREAM_SILENCE)
            .build()
            .unwrap_or_default();
        ApiClient {
            base: base.trim_end_matches('/').to_owned(),
            http,
            streaming,
            wait_starting: false,
            token: Token::None,
        }
    }

    /// The same client, sending `token` with every request.
    #[must_use]
    pub fn with_token(mut self, token: &str) -> ApiClient {
        self.token = Token::Value(token.trim().to_owned());
        self
    }

    /// The same client, sending the token in `file` (read at every request, so a planner
    /// still making its first admin token is waited for).
    #[must_use]
    pub fn with_token_file(mut self, file: PathBuf) -> ApiClient {
        self.token = Token::File(file);
        self
    }

    /// The same client without a token (for tests of what an anonymous caller gets).
    #[must_use]
    pub fn without_token(mut self) -> ApiClient {
        self.token = Token::None;
        self
    }

    /// The token this client sends now, if any.
    pub fn token(&self) -> Option<String> {
        match &self.token {
            Token::None => None,
            Token::Value(t) => Some(t.clone()),
            Token::File(p) => std::fs::read_to_string(p)
                .ok()
                .map(|t| t.trim().to_owned())
                .filter(|t| !t.is_empty()),
        }
    }

    /// The same client, but a request that a starting planner answers with 503 and
    /// `Retry-After` is sent again for up to [`STARTING_WAIT`], after saying once on stderr
    /// what the planner waits for: what a person running a command right after starting the
    /// planner wants. Without it, the 503 is the answer (tests and tools that watch the start).
    #[must_use]
    pub fn waiting_for_start(mut self) -> ApiClient {
        self.wait_starting = true;
        self
    }

    /// The base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// `GET path`, the answer as JSON.
    ///
    /// # Errors
    /// The planner is unreachable or answered with an error.
    pub async fn get(&self, path: &str) -> Result<Value, ClientError> {
        let text = self.send(self.http.get(self.url(path))).await?;
        Ok(lenient(text))
    }

    /// `POST path` with a JSON body, the answer as JSON.
    ///
    /// # Errors
    /// The planner is unreachable or answered with an error.
    pub async fn post(&self, path: &str, body: &Value) -> Result<Value, ClientError> {
        let text = self.send(self.http.post(self.url(path)).json(body)).await?;
        Ok(lenient(text))
    }

    /// `POST path` with a raw body (to test how the planner handles bad input).
    ///
    /// # Errors
    /// The planner is unreachable or answered with an error.
    pub async fn post_raw(&self, path: &str, body: &str) -> Result<Value, ClientError> {
        let text = self
            .send(
                self.http
                    .post(self.url(path))
                    .header("content-type", "application/json")
                    .body(body.to_owned()),
            )
            .await?;
        Ok(lenient(text))
    }

    /// `PUT path` with a JSON body, the answer as JSON.
    ///
    /// # Errors
    /// The planner is unreachable or answered with an error.
    pub async fn put(&self, path: &str, body: &Value) -> Result<Value, ClientError> {
        let text = self.send(self.http.put(self.url(path)).json(body)).await?;
        Ok(lenient(text))
    }

    /// `DELETE path` (an empty answer reads as `null`).
    ///
    /// # Errors
    /// The planner is unreachable or answered with an error.
    pub async fn delete(&self, path: &str) -> Result<Value, ClientError> {
        let text = self.send(self.http.delete(self.url(path))).await?;
        Ok(if text.is_empty() {
            Value::Null
        } else {
            lenient(text)
        })
    }

    /// `GET path`, the answer read as a `T`.
    ///
    /// # Errors
    /// The planner is unreachable, answered with an error, or with something else than a `T`.
    pub async fn get_as<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let text = self.send(self.http.get(self.url(path))).await?;
        typed(&format!("GET {path}"), &text)
    }

    /// `POST path` with a body, the answer read as a `T`.
    ///
    /// # Errors
    /// The planner is unreachable, answered with an error, or with something else than a `T`.
    pub async fn post_as<B, T>(&self, path: &str, body: &B) -> Result<T, ClientError>
    where
        B: Serialize + ?Sized,
        T: DeserializeOwned,
    {
        let text = self.send(self.http.post(self.url(path)).json(body)).await?;
        typed(&format!("POST {path}"), &text)
    }

    /// `PUT path` with a body, the answer read as a `T`.
    ///
    /// # Errors
    /// The planner is unreachable, answered with an error, or with something else than a `T`.
    pub async fn put_as<B, T>(&self, path: &str, body: &B) -> Result<T, ClientError>
    where
        B: Serialize + ?Sized,
        T: DeserializeOwned,
    {
        let text = self.send(self.http.put(self.url(path)).json(body)).await?;
        typed(&format!("PUT {path}"), &text)
    }

    /// `PUT path` with a streamed body of `content_type`, the answer read as a `T` (a
    /// streamed body is sent once: no wait for a starting planner).
    ///
    /// # Errors
    /// The planner is unreachable, answered with an error, or with something else than a `T`.
    pub async fn put_stream_as<T: DeserializeOwned>(
        &self,
        path: &str,
        content_type: &str,
        body: reqwest::Body,
    ) -> Result<T, ClientError> {
        let req = self
            .http
            .put(self.url(path))
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(body);
        let text = self.send(req).await?;
        typed(&format!("PUT {path}"), &text)
    }

    /// `GET path`, the answer's body as it streams in (sent once: no wait for a starting
    /// planner).
    ///
    /// # Errors
    /// The planner is unreachable or answered with an error.
    pub async fn get_stream(&self, path: &str) -> Result<reqwest::Response, ClientError> {
        self.open(self.http.get(self.url(path))).await
    }

    /// `GET path` of an answer with no end (Server-Sent Events), resuming after
    /// `last_event_id` when given (`Last-Event-ID`): only silence longer than
    /// [`STREAM_SILENCE`] ends it, not its length.
    ///
    /// # Errors
    /// The planner is unreachable or answered with an error.
    pub async fn get_event_stream(
        &self,
        path: &str,
        last_event_id: Option<u64>,
    ) -> Result<reqwest::Response, ClientError> {
        let req = self
            .streaming
            .get(self.url(path))
            .header(reqwest::header::ACCEPT, "text/event-stream");
        let req = match last_event_id {
            Some(id) => req.header("Last-Event-ID", id.to_string()),
            None => req,
        };
        self.open(req).await
    }

    /// Sends a request once; the answer, its body not read, when it is a success.
    async fn open(&self, req: reqwest::RequestBuilder) -> Result<reqwest::Response, ClientError> {
        let unreachable = |e: reqwest::Error| ClientError::Unreachable {
            api: self.base.clone(),
            cause: shoal_shared::innermost(&e),
        };
        let req = match self.token() {
            Some(token) => req.bearer_auth(token),
            None => req,
        };
        let resp = req.send().await.map_err(unreachable)?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let text = resp.text().await.map_err(unreachable)?;
        Err(ClientError::Api {
            status: status.as_u16(),
            message: self.with_hint(status.as_u16(), error_text(&text)),
        })
    }

    /// One page of a task's output: the lines after `after` (from the first when `None`),
    /// as many as the planner gives at once.
    ///
    /// # Errors
    /// As [`ApiClient::get_as`].
    pub async fn task_log_page(
        &self,
        deployment: &str,
        task: &str,
        after: Option<LogCursor>,
    ) -> Result<TaskLog, ClientError> {
        let mut path = format!("/api/deployments/{deployment}/tasks/{task}/log");
        if let Some(after) = after {
            path.push_str(&format!("?after={after}"));
        }
        self.get_as(&path).await
    }

    /// Reads a task's output page by page from `after`, in order, handing each page's lines
    /// to `each` as they come (so a long log is never held whole); the last page, its lines
    /// taken.
    ///
    /// # Errors
    /// As [`ApiClient::get_as`].
    pub async fn task_log_pages(
        &self,
        deployment: &str,
        task: &str,
        mut after: Option<LogCursor>,
        mut each: impl FnMut(Vec<LogLine>),
    ) -> Result<TaskLog, ClientError> {
        loop {
            let mut page = self.task_log_page(deployment, task, after).await?;
            each(std::mem::take(&mut page.lines));
            // A planner from before paging sends everything at once, with no `more`.
            if !page.more || page.next.is_none() {
                return Ok(page);
            }
            after = page.next;
        }
    }

    /// Every line of a task's output, page after page, in order.
    ///
    /// # Errors
    /// As [`ApiClient::get_as`].
    pub async fn task_log(
        &self,
        deployment: &str,
        task: &str,
    ) -> Result<Vec<LogLine>, ClientError> {
        let mut lines = Vec::new();
        self.task_log_pages(deployment, task, None, |page| lines.extend(page))
            .await?;
        Ok(lines)
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Sends a request; the text of a successful answer, else the error it names. A planner
    /// that is still starting answers 503 with `Retry-After` and what it waits for: when the
    /// client waits for a start, that is said once on stderr and the request is sent again,
    /// for up to [`STARTING_WAIT`].
    async fn send(&self, req: reqwest::RequestBuilder) -> Result<String, ClientError> {
        let unreachable = |e: reqwest::Error| ClientError::Unreachable {
            api: self.base.clone(),
            cause: shoal_shared::innermost(&e),
        };
        let give_up = tokio::time::Instant::now() + STARTING_WAIT;
        let mut told = false;
        let mut req = req;
        let (status, text) = loop {
            let again = req.try_clone();
            let sent = match self.token() {
                Some(token) => req.bearer_auth(token),
                None => req,
            };
            let resp = sent.send().await.map_err(unreachable)?;
            let status = resp.status();
            let retry_after = resp
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
            let text = resp.text().await.map_err(unreachable)?;
            match (status, retry_after, again) {
                (reqwest::StatusCode::SERVICE_UNAVAILABLE, Some(secs), Some(again))
                    if self.wait_starting && tokio::time::Instant::now() < give_up =>
                {
                    if !told {
                        eprintln!("{}; waiting for it", error_text(&text));
                        told = true;
                    }
                    tokio::time::sleep(Duration::from_secs(secs.clamp(1, 5))).await;
                    req = again;
                }
                _ => break (status, text),
            }
        };
        if status.is_success() {
            return Ok(text);
        }
        Err(ClientError::Api {
            status: status.as_u16(),
            message: self.with_hint(status.as_u16(), error_text(&text)),
        })
    }

    /// What to do about a 401 or 403, after the planner's message.
    fn with_hint(&self, status: u16, message: String) -> String {
        let hint = match (status, &self.token) {
            (401, Token::None) => {
                "; set SHOAL_TOKEN (or --token) to an API token: the planner wrote its first admin token to admin.token in its data dir, and `shoal token create` makes more".to_owned()
            }
            (401, Token::File(p)) if self.token().is_none() => format!(
                "; the token file {} is missing or empty (set SHOAL_TOKEN_FILE or SHOAL_TOKEN)",
                p.display()
            ),
            (401, _) => {
                "; check SHOAL_TOKEN (or --token): this token is unknown to the planner or was revoked".to_owned()
            }
            (403, _) => {
                "; use a token with that role, or ask an admin for one (`shoal token create --role ROLE`)".to_owned()
            }
            _ => String::new(),
        };
        message + &hint
    }
}

/// How long a command waits for a planner that says it is still starting.
pub const STARTING_WAIT: Duration = Duration::from_secs(15);

/// How long an event stream may be silent before it is taken as dropped: three of the
/// planner's keep-alives.
pub const STREAM_SILENCE: Duration = Duration::from_secs(45);

/// The message of an error answer: the planner's error body, else what came (a proxy in
/// between?).
fn error_text(text: &str) -> String {
    match serde_json::from_str::<ErrorBody>(text) {
        Ok(body) => body.error,
        Err(_) => lenient(text.to_owned()).to_string(),
    }
}

/// An answer as JSON, or as a JSON string when it is not JSON.
fn lenient(text: String) -> Value {
    serde_json::from_str(&text).unwrap_or(Value::String(text))
}

/// An answer read as a `T`; the error names the request and the field at fault.
fn typed<T: DeserializeOwned>(request: &str, text: &str) -> Result<T, ClientError> {
    let de = &mut serde_json::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| ClientError::Answer {
        request: request.to_owned(),
        cause: e.to_string(),
    })
}
