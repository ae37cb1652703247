//! Short ids: the prefixes the CLI shows for deployments and tasks, and the resolution of a
//! prefix a user types back to the one id it names.
//!
//! Ids are UUID v7, whose first 12 hex digits are the creation time in milliseconds: ids made
//! within about a minute share their first 8 characters, and tasks planned together share
//! nearly all of theirs. So a short id is the shortest prefix, of at least [`MIN_SHORT`]
//! characters, that tells apart every id it is shown with.

use crate::client::ApiClient;
use shoal_shared::api::{DeploymentDetail, DeploymentSummary};
use shoal_shared::ids::{DeploymentId, TaskId};

/// The fewest characters a short id has.
pub const MIN_SHORT: usize = 8;
/// How many of the newest deployments a prefix is looked up among (the most the planner
/// lists at once); an older one needs its whole id.
pub const LOOKUP_LIMIT: usize = 10_000;

/// An id the CLI could not resolve: the request is refused before it is sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error(
        "\"{wanted}\" is not a {what} id: give the whole id or its first characters \
         (hexadecimal digits and hyphens)"
    )]
    Malformed { what: &'static str, wanted: String },
    #[error("{owner} has no {what} {wanted} ({hint})")]
    Unknown {
        what: &'static str,
        wanted: String,
        /// Who was asked: "the planner", "deployment …".
        owner: String,
        /// What there is instead, or where to look.
        hint: String,
    },
    #[error(
        "\"{wanted}\" is the start of {} {what} ids: {}; give more of the id",
        matches.len(),
        listed(matches)
    )]
    Ambiguous {
        what: &'static str,
        wanted: String,
        matches: Vec<String>,
    },
}

/// Most ids an error lists; a prefix such as "01" starts thousands.
const LISTED: usize = 10;

fn listed(ids: &[String]) -> String {
    let mut text = ids[..ids.len().min(LISTED)].join(", ");
    if ids.len() > LISTED {
        text.push_str(&format!(" and {} more", ids.len() - LISTED));
    }
    text
}

/// How many characters tell every one of `ids` apart: at least [`MIN_SHORT`], never past
/// the longest id, and never ending on a hyphen.
pub fn short_len<S: AsRef<str>>(ids: &[S]) -> usize {
    let mut sorted: Vec<&str> = ids.iter().map(AsRef::as_ref).collect();
    sorted.sort_unstable();
    sorted.dedup();
    let longest = sorted.iter().map(|s| s.len()).max().unwrap_or(0);
    let shared = sorted
        .windows(2)
        .map(|w| common_prefix(w[0], w[1]))
        .max()
        .unwrap_or(0);
    let mut len = (shared + 1).max(MIN_SHORT);
    // "019ad3f2-" reads as cut off; one more character costs nothing.
    while len < longest
        && sorted
            .iter()
            .any(|s| s.as_bytes().get(len - 1) == Some(&b'-'))
    {
        len += 1;
    }
    len.min(longest)
}

/// The first `len` characters of `id` (all of it when shorter).
pub fn shorten(id: &str, len: usize) -> &str {
    id.get(..len).unwrap_or(id)
}

/// The one of `known` that `wanted` names: the whole id, or its first characters (hyphens
/// optional, any case). `owner` and `hint` make the error when none does.
///
/// # Errors
/// `wanted` is empty, names none of `known`, or starts several.
pub fn resolve<'a, S: AsRef<str>>(
    what: &'static str,
    wanted: &str,
    known: &'a [S],
    owner: &str,
    hint: impl FnOnce() -> String,
) -> Result<&'a str, IdError> {
    let key = lowered(wanted);
    if key.is_empty() {
        return Err(IdError::Malformed {
            what,
            wanted: wanted.to_owned(),
        });
    }
    let matches: Vec<&str> = known
        .iter()
        .map(AsRef::as_ref)
        .filter(|id| lowered(id).starts_with(&key))
        .collect();
    match matches.as_slice() {
        [one] => Ok(one),
        [] => Err(IdError::Unknown {
            what,
            wanted: wanted.to_owned(),
            owner: owner.to_owned(),
            hint: hint(),
        }),
        many => Err(IdError::Ambiguous {
            what,
            wanted: wanted.to_owned(),
            matches: many.iter().map(|s| (*s).to_owned()).collect(),
        }),
    }
}

/// An id or part of one as compared: lower case, without hyphens.
fn lowered(id: &str) -> String {
    id.trim()
        .chars()
        .filter(|c| *c != '-')
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

/// Checks that `wanted` could be an id or the start of one, without asking the planner.
///
/// # Errors
/// It could not: empty, or not hexadecimal digits and hyphens.
pub fn check_shape(what: &'static str, wanted: &str) -> Result<(), IdError> {
    let key = lowered(wanted);
    if key.is_empty() || !key.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(IdError::Malformed {
            what,
            wanted: wanted.to_owned(),
        });
    }
    Ok(())
}

fn common_prefix(a: &str, b: &str) -> usize {
    a.bytes().zip(b.bytes()).take_while(|(x, y)| x == y).count()
}

/// The deployment `wanted` names: a whole id as it is, a prefix looked up among the newest
/// [`LOOKUP_LIMIT`] deployments.
///
/// # Errors
/// An [`IdError`], or the listing failed.
pub async fn deployment(api: &ApiClient, wanted: &str) -> anyhow::Result<DeploymentId> {
    if let Ok(id) = DeploymentId::parse(wanted.trim()) {
        return Ok(id);
    }
    check_shape("deployment", wanted)?;
    let list: Vec<DeploymentSummary> = api
        .get_as(&format!("/api/deployments?limit={LOOKUP_LIMIT}"))
        .await?;
    let known: Vec<String> = list.iter().map(|d| d.id.to_string()).collect();
    let id = resolve("deployment", wanted, &known, "the planner", || {
        if known.len() < LOOKUP_LIMIT {
            "no deployment id starts so; see `shoal deployment list`".to_owned()
        } else {
            format!("not among the newest {LOOKUP_LIMIT}; give an older one's whole id")
        }
    })?;
    Ok(DeploymentId::parse(id)?)
}

/// The task of `d` that `wanted` names (its whole id or its first characters).
///
/// # Errors
/// An [`IdError`] listing the deployment's tasks when none matches.
pub fn task(d: &DeploymentDetail, wanted: &str) -> Result<TaskId, IdError> {
    let known: Vec<String> = d
        .steps
        .iter()
        .flat_map(|s| s.tasks.iter().map(|t| t.id.to_string()))
        .collect();
    let owner = format!("deployment {}", d.id);
    let id = resolve("task", wanted, &known, &owner, || {
        let len = short_len(&known);
        let tasks: Vec<&str> = known.iter().map(|t| shorten(t, len)).collect();
        format!("its tasks: {}", tasks.join(", "))
    })?;
    TaskId::parse(id).map_err(|_| IdError::Malformed {
        what: "task",
        wanted: wanted.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_id_is_eight_characters_when_those_differ() {
        let ids = [
            "0194a1b2-0000-7000-8000-000000000001",
            "0194a1b3-0000-7000-8000-0",
        ];
        assert_eq!(short_len(&ids), 8);
        assert_eq!(shorten(ids[0], 8), "0194a1b2");
    }

    #[test]
    fn a_short_id_grows_past_shared_characters_and_hyphens() {
        // Made in the same minute: the first 8 are shared, the 10th differs.
        let ids = [
            "0194a1b2-3c00-7000-8000-000000000001",
            "0194a1b2-4c00-7000-8000-000000000001",
        ];
        assert_eq!(short_len(&ids), 10);
        let ids = [
            "0194a1b2-3c00-7000-8000-000000000001",
            "0194a1b2-3c00-7000-8000-000000000002",
        ];
        assert_eq!(short_len(&ids), 36);
        assert_eq!(short_len::<&str>(&[]), 0);
    }

    #[test]
    fn an_ambiguous_prefix_lists_at_most_ten_matches() {
        let known: Vec<String> = (0..25).map(|i| format!("0194a1b2-{i:04}")).collect();
        let e = resolve("deployment", "0194", &known, "p", String::new).expect_err("many");
        let text = e.to_string();
        assert!(
            text.contains("25 deployment ids")
                && text.ends_with("and 15 more; give more of the id"),
            "{text}"
        );
    }
}
