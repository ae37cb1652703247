//! Webhooks: subscriptions that POST records of the log to a URL, signed; the document
//! (filters, sealed secret, how far deliveries got, whether paused), how webhook events
//! change it, and the commands that create, resume and remove one and record its
//! deliveries. Deliveries themselves are effects carried out outside (`webhooks`).

use super::decide::{NewEvent, Rejection, join};
use super::state::{Changes, DocKey, State};
use serde::{Deserialize, Serialize};
use shoal_shared::events::{Event, check_types};
use shoal_shared::secret::Sealed;
use shoal_shared::{Timestamp, TokenName};

/// Most webhooks.
pub const MAX_WEBHOOKS: usize = 64;

/// A webhook subscription.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookDoc {
    pub name: TokenName,
    pub url: String,
    pub types: Vec<String>,
    pub projects: Vec<String>,
    pub environments: Vec<String>,
    pub secret: Sealed,
    /// Every record up to here is delivered or not wanted.
    pub delivered_through: u64,
    /// Why deliveries stopped, until resumed.
    pub paused: Option<String>,
    /// Failed attempts in a row (of the record being delivered).
    pub failing: u32,
    pub created_at: Timestamp,
}

impl WebhookDoc {
    /// Whether a record of this type, of a deployment of this project and environment
    /// (none: not a deployment's), is one the webhook wants. Webhooks' own records are never
    /// sent (each delivery makes one).
    pub fn wants(&self, stream: &str, event_type: &str, deployment: Option<(&str, &str)>) -> bool {
        if stream.starts_with("webhook/") {
            return false;
        }
        let typed = self.types.is_empty() || self.types.iter().any(|t| t == event_type);
        let scoped = self.projects.is_empty() && self.environments.is_empty()
            || deployment.is_some_and(|(project, env)| {
                (self.projects.is_empty() || self.projects.iter().any(|p| p == project))
                    && (self.environments.is_empty() || self.environments.iter().any(|e| e == env))
            });
        typed && scoped
    }
}

impl State {
    /// How a webhook's events change the state.
    pub(super) fn apply_webhook(&mut self, at: Timestamp, event: &Event, changes: &mut Changes) {
        let name = match event {
            Event::WebhookCreated {
                name,
                url,
                types,
                projects,
                environments,
                secret,
                after,
            } => {
                let doc = WebhookDoc {
                    name: name.clone(),
                    url: url.clone(),
                    types: types.clone(),
                    projects: projects.clone(),
                    environments: environments.clone(),
                    secret: secret.clone(),
                    delivered_through: *after,
                    paused: None,
                    failing: 0,
                    created_at: at,
                };
                self.webhooks.insert(name.clone(), doc);
                name
            }
            Event::WebhookRemoved { name } => {
                self.webhooks.remove(name);
                name
            }
            Event::WebhookDelivered { name, seq, .. }
            | Event::WebhookAttemptFailed { name, seq, .. }
            | Event::WebhookPaused { name, seq, .. } => {
                let Some(w) = self.webhooks.get_mut(name) else {
                    return;
                };
                match event {
                    Event::WebhookDelivered { .. } => {
                        w.delivered_through = w.delivered_through.max(*seq);
                        w.failing = 0;
                    }
                    Event::WebhookAttemptFailed { attempt, .. } => w.failing = *attempt,
                    Event::WebhookPaused { reason, .. } => w.paused = Some(reason.clone()),
                    _ => {}
                }
                name
            }
            Event::WebhookResumed { name } => {
                let Some(w) = self.webhooks.get_mut(name) else {
                    return;
                };
                w.paused = None;
                w.failing = 0;
                name
            }
            _ => return,
        };
        changes.docs.insert(DocKey::Webhook(name.clone()));
    }
}

/// What a new webhook is.
#[derive(Debug, Clone)]
pub struct NewWebhook {
    pub name: TokenName,
    pub url: String,
    pub types: Vec<String>,
    pub projects: Vec<String>,
    pub environments: Vec<String>,
    pub secret: Sealed,
    pub after: u64,
}

/// `CreateWebhook`: a new webhook of a free name, an http(s) URL and known types.
pub(super) fn create(state: &State, w: &NewWebhook) -> Result<Vec<NewEvent>, Rejection> {
    if state.webhooks.contains_key(&w.name) {
        return Err(Rejection::Conflict(format!(
            "webhook \"{}\" already exists; remove it first or pick another name",
            w.name
        )));
    }
    if state.webhooks.len() >= MAX_WEBHOOKS {
        return Err(Rejection::Conflict(format!(
            "there are {MAX_WEBHOOKS} webhooks already (the most); remove one first"
        )));
    }
    if !(w.url.starts_with("https://") || w.url.starts_with("http://")) || w.url.len() > 2048 {
        return Err(Rejection::Invalid(format!(
            "url: \"{}\" is not an http:// or https:// URL",
            w.url
        )));
    }
    check_types(&w.types).map_err(|e| Rejection::Invalid(format!("types: {e}")))?;
    Ok(vec![NewEvent::new(Event::WebhookCreated {
        name: w.name.clone(),
        url: w.url.clone(),
        types: w.types.clone(),
        projects: w.projects.clone(),
        environments: w.environments.clone(),
        secret: w.secret.clone(),
        after: w.after,
    })])
}

/// The outcome of one delivery attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    Delivered {
        status: u16,
    },
    Failed {
        status: Option<u16>,
        error: String,
        retry_in_ms: u64,
    },
    GaveUp {
        reason: String,
    },
}

/// `RecordWebhookAttempt`: the attempt as a fact (nothing for a webhook removed meanwhile).
pub(super) fn attempt(
    state: &State,
    name: &TokenName,
    seq: u64,
    attempt: u32,
    outcome: &Attempt,
) -> Vec<NewEvent> {
    if !state.webhooks.contains_key(name) {
        return vec![];
    }
    let name = name.clone();
    vec![NewEvent::new(match outcome {
        Attempt::Delivered { status } => Event::WebhookDelivered {
            name,
            seq,
            attempt,
            status: *status,
        },
        Attempt::Failed {
            status,
            error,
            retry_in_ms,
        } => Event::WebhookAttemptFailed {
            name,
            seq,
            attempt,
            status: *status,
            error: error.clone(),
            retry_in_ms: *retry_in_ms,
        },
        Attempt::GaveUp { reason } => Event::WebhookPaused {
            name,
            seq,
            attempts: attempt,
            reason: reason.clone(),
        },
    })]
}

/// `ResumeWebhook` / `RemoveWebhook`.
pub(super) fn resume_or_remove(
    state: &State,
    name: &TokenName,
    remove: bool,
) -> Result<Vec<NewEvent>, Rejection> {
    let Some(w) = state.webhooks.get(name) else {
        return Err(Rejection::NotFound(format!(
            "unknown webhook \"{name}\" (known: {})",
            join(state.webhooks.keys())
        )));
    };
    let name = name.clone();
    Ok(if remove {
        vec![NewEvent::new(Event::WebhookRemoved { name })]
    } else if w.paused.is_some() {
        vec![NewEvent::new(Event::WebhookResumed { name })]
    } else {
        vec![]
    })
}
