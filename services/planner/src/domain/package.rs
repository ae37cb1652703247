//! Packages in the feed: a version's document (its manifest and when it was pushed), how
//! `PackagePushed` and `PackageRemoved` change it, and the commands that record and remove
//! versions. The bytes are chunks in the broker's object store (`packages`, at the planner's
//! I/O edge), stored before the version is recorded; the log holds what each version is.

use super::decide::{NewEvent, Rejection, join};
use super::state::{Changes, DocKey, State};
use serde::{Deserialize, Serialize};
use shoal_shared::events::Event;
use shoal_shared::package::{Acquisitions, Manifest, Sha256, chunk_object, manifest_object};
use shoal_shared::{PackageId, PoolName, Timestamp};
use std::collections::{BTreeMap, BTreeSet};

/// One version of a package in the feed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackageDoc {
    pub manifest: Manifest,
    /// SHA-256 of the manifest as stored in the feed: what a task carries.
    pub manifest_sha256: Sha256,
    pub pushed_at: Timestamp,
    /// When it left the feed. A removed version is kept (without being listed or
    /// deployable) so that it can never come back with other bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub removed_at: Option<Timestamp>,
    /// Its acquisitions by workers, added up per pool.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub acquired: BTreeMap<PoolName, Acquisitions>,
}

/// A package version's key: its id and version.
pub type PackageKey = (PackageId, semver::Version);

impl State {
    /// How a package's events change the state.
    pub(super) fn apply_package(&mut self, at: Timestamp, event: &Event, changes: &mut Changes) {
        match event {
            Event::PackagePushed {
                manifest,
                manifest_sha256,
            } => {
                let key = (manifest.id.clone(), manifest.version.clone());
                let doc = PackageDoc {
                    manifest: manifest.clone(),
                    manifest_sha256: *manifest_sha256,
                    pushed_at: at,
                    removed_at: None,
                    acquired: BTreeMap::new(),
                };
                // A version pushed again after its removal keeps what it was used for.
                let acquired = self.packages.remove(&key).map(|d| d.acquired);
                let doc = PackageDoc {
                    acquired: acquired.unwrap_or_default(),
                    ..doc
                };
                self.packages.insert(key.clone(), doc);
                changes.docs.insert(DocKey::Package(key.0, key.1));
            }
            Event::PackageRemoved { id, version } => {
                if let Some(doc) = self.packages.get_mut(&(id.clone(), version.clone())) {
                    doc.removed_at = Some(at);
                }
                changes
                    .docs
                    .insert(DocKey::Package(id.clone(), version.clone()));
            }
            Event::PackageAcquired { pool, acquired, .. } => {
                let key = (acquired.id.clone(), acquired.version.clone());
                if let Some(doc) = self.packages.get_mut(&key) {
                    doc.acquired.entry(pool.clone()).or_default().add(acquired);
                    changes.docs.insert(DocKey::Package(key.0, key.1));
                }
            }
            _ => {}
        }
    }

    /// The versions of a package in the feed (not removed), oldest first.
    pub fn package_versions(&self, id: &PackageId) -> impl Iterator<Item = &PackageDoc> {
        // Every version sorts after (id, 0.0.0-0), pre-releases of 0.0.0 included.
        let lowest = semver::Version {
            pre: semver::Prerelease::new("0").unwrap_or(semver::Prerelease::EMPTY),
            ..semver::Version::new(0, 0, 0)
        };
        self.packages
            .range((id.clone(), lowest)..)
            .take_while(move |((i, _), _)| i == id)
            .map(|(_, doc)| doc)
            .filter(|doc| doc.removed_at.is_none())
    }

    /// A version in the feed (not removed).
    pub fn package(&self, id: &PackageId, version: &semver::Version) -> Option<&PackageDoc> {
        (self.packages.get(&(id.clone(), version.clone()))).filter(|d| d.removed_at.is_none())
    }
}

/// `RecordPackage`: a version whose chunks are in the feed. Versions are immutable: pushing
/// the same bytes again changes nothing; other bytes under the same version are refused.
/// With `keep` > 0, a new version removes the package's versions older than its newest
/// `keep`, except those an unfinished deployment deploys.
pub(super) fn record(
    state: &State,
    manifest: &Manifest,
    manifest_sha256: Sha256,
    keep: u32,
) -> Result<Vec<NewEvent>, Rejection> {
    manifest.check().map_err(Rejection::Invalid)?;
    let key = (manifest.id.clone(), manifest.version.clone());
    let pushed = NewEvent::new(Event::PackagePushed {
        manifest: manifest.clone(),
        manifest_sha256,
    });
    if let Some(doc) = state.packages.get(&key) {
        if doc.manifest.sha256 != manifest.sha256 {
            return Err(Rejection::Conflict(format!(
                "package {} {} was pushed before with other content (SHA-256 {}); a version never changes, even once removed: push this file as a new version",
                manifest.id, manifest.version, doc.manifest.sha256
            )));
        }
        // The same bytes: nothing changes, or a removed version comes back as it was.
        if doc.removed_at.is_none() {
            return Ok(vec![]);
        }
    }
    let mut events = vec![pushed];
    events.extend(beyond_retention(
        state,
        &manifest.id,
        &manifest.version,
        keep,
    ));
    Ok(events)
}

/// The removals that keep a package at its newest `keep` versions once `new` is in (none
/// when `keep` is 0); a version an unfinished deployment deploys stays.
fn beyond_retention(
    state: &State,
    id: &PackageId,
    new: &semver::Version,
    keep: u32,
) -> Vec<NewEvent> {
    if keep == 0 {
        return vec![];
    }
    let mut versions: Vec<&semver::Version> = state
        .package_versions(id)
        .map(|d| &d.manifest.version)
        .chain([new])
        .collect();
    versions.sort_by(|a, b| b.cmp(a));
    versions.dedup();
    versions
        .into_iter()
        .skip(keep as usize)
        .filter(|v| *v != new && users(state, id, v).is_empty())
        .map(|v| {
            NewEvent::new(Event::PackageRemoved {
                id: id.clone(),
                version: v.clone(),
            })
        })
        .collect()
}

/// The unfinished deployments that deploy a version.
fn users(state: &State, id: &PackageId, version: &semver::Version) -> Vec<String> {
    state
        .active
        .iter()
        .filter_map(|d| state.deployments.get(d))
        .filter(|d| {
            (d.steps.iter().filter_map(|s| s.package.as_ref()))
                .any(|p| &p.id == id && &p.version == version)
        })
        .map(|d| d.id.to_string())
        .collect()
}

/// `RemovePackage`: a version leaves the feed, unless an unfinished deployment deploys it
/// (its tasks carry its manifest's digest, and a retry must still find its chunks).
pub(super) fn remove(
    state: &State,
    id: &PackageId,
    version: &semver::Version,
) -> Result<Vec<NewEvent>, Rejection> {
    if state.package(id, version).is_none() {
        let known = join(state.package_versions(id).map(|d| &d.manifest.version));
        return Err(Rejection::NotFound(format!(
            "package {id} has no version {version} (versions in the feed: {known})"
        )));
    }
    let users = users(state, id, version);
    if !users.is_empty() {
        return Err(Rejection::Conflict(format!(
            "package {id} {version} is deployed by unfinished deployments ({}); remove it once they end",
            users.join(", ")
        )));
    }
    Ok(vec![NewEvent::new(Event::PackageRemoved {
        id: id.clone(),
        version: version.clone(),
    })])
}

/// The objects the feed must keep: the manifest and chunks of every version in it. A removed
/// version's are not needed (no deployment can deploy it again), nor is anything a push left
/// without recording its version; the planner sweeps the rest away (`Effect::SweepFeed`).
pub fn feed_objects<'a>(docs: impl IntoIterator<Item = &'a PackageDoc>) -> BTreeSet<String> {
    let mut keep = BTreeSet::new();
    for doc in docs.into_iter().filter(|d| d.removed_at.is_none()) {
        keep.insert(manifest_object(&doc.manifest_sha256));
        keep.extend(doc.manifest.chunks.iter().map(|c| chunk_object(&c.sha256)));
    }
    keep
}
