//! The planner's keys for sensitive variables, at the edges of the pure core: the master key
//! that seals values for the log (made at first start, never silently replaced over sealed
//! values), the default pool's key for the built-in worker, and the [`Sealer`] the
//! dispatcher uses to re-seal a task's values for its pool's workers.

use crate::domain::state::PoolDoc;
use crate::log::{EventLog, LogError, Proj, decode_event};
use shoal_runtime::secrets::{self, MasterKey, PoolSecretKey, SecretError};
use shoal_shared::PoolName;
use shoal_shared::events::Event;
use shoal_shared::messages::TaskMessage;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Why the planner's keys could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(transparent)]
    Key(#[from] SecretError),
    #[error(transparent)]
    Log(#[from] LogError),
    #[error(
        "no master key at {path}, but the event log holds sensitive values sealed with master key {id}; start the planner with that key (--master-key FILE or SHOAL_MASTER_KEY, or restore it to {path} from your backup). A new key would not open them, so none is made"
    )]
    Missing { path: PathBuf, id: String },
    #[error(
        "the master key in {path} (id {have}) is not the one this data dir's sensitive values were sealed with (id {want}); start the planner with the right --master-key / SHOAL_MASTER_KEY"
    )]
    Wrong {
        path: PathBuf,
        have: String,
        want: String,
    },
    #[error("cannot record the master key's id in {path}: {source}")]
    Id {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Where the master key lives unless `--master-key` says otherwise.
pub fn default_master_key_path(data_dir: &Path) -> PathBuf {
    data_dir.join("keys").join("master.key")
}

/// Where the default pool's secret key lives (for the built-in worker, and to copy to the
/// default pool's external workers).
pub fn default_pool_key_path(data_dir: &Path, pool: &PoolName) -> PathBuf {
    data_dir.join("keys").join(format!("pool-{pool}.xkey"))
}

/// Loads the master key, or makes one when there is none and the log holds no value sealed
/// with another. The key's id is kept in `<data_dir>/keys/master.id`, so that a planner
/// started with a different key stops at once instead of failing task by task.
///
/// # Errors
/// A missing key while the log holds sealed values, a key other than the one recorded, or
/// a key file that cannot be read or written.
pub fn open_master_key(
    data_dir: &Path,
    path: Option<&Path>,
    log: &EventLog,
) -> Result<MasterKey, KeyError> {
    let path = path.map_or_else(|| default_master_key_path(data_dir), Path::to_path_buf);
    let id_file = data_dir.join("keys").join("master.id");
    let recorded = std::fs::read_to_string(&id_file)
        .ok()
        .map(|s| s.trim().to_owned());
    let key = if path.exists() {
        let key = MasterKey::load(&path)?;
        let want = match recorded {
            Some(id) => Some(id),
            None => sealed_with(log)?,
        };
        if let Some(want) = want.filter(|w| w != key.id()) {
            let have = key.id().to_owned();
            return Err(KeyError::Wrong { path, have, want });
        }
        key
    } else {
        if let Some(id) = sealed_with(log)? {
            return Err(KeyError::Missing { path, id });
        }
        let key = MasterKey::create(&path)?;
        tracing::warn!(path = %path.display(), key.id = key.id(), "created the master key that seals sensitive variables; back it up: without it they cannot be used (docs/security/secrets.md)");
        key
    };
    let write_id = |source| KeyError::Id {
        path: id_file.clone(),
        source,
    };
    if let Some(dir) = id_file.parent() {
        std::fs::create_dir_all(dir).map_err(write_id)?;
    }
    std::fs::write(&id_file, format!("{}\n", key.id())).map_err(write_id)?;
    Ok(key)
}

/// The id of the master key the first sealed value in the log was sealed with, if any.
/// Reads the whole log: only when the key or its recorded id is missing.
fn sealed_with(log: &EventLog) -> Result<Option<String>, KeyError> {
    const PAGE: usize = 4096;
    let mut after = 0;
    loop {
        let page = log.read(after, PAGE)?;
        let Some(last) = page.last() else {
            return Ok(None);
        };
        after = last.seq;
        for env in page.iter().filter(|e| e.event_type == "DeploymentCreated") {
            let Ok(Event::DeploymentCreated { spec, .. }) = decode_event(env) else {
                continue;
            };
            let found = spec
                .steps
                .iter()
                .flat_map(|s| s.sensitive_variables.values())
                .next();
            if let Some(sealed) = found {
                return Ok(Some(sealed.key.clone()));
            }
        }
    }
}

/// Loads the default pool's secret key from the data dir, making it at first start.
///
/// # Errors
/// The key file cannot be read or written.
pub fn default_pool_key(data_dir: &Path, pool: &PoolName) -> Result<PoolSecretKey, SecretError> {
    let path = default_pool_key_path(data_dir, pool);
    if path.exists() {
        return PoolSecretKey::load(&path);
    }
    let key = PoolSecretKey::generate();
    key.save(&path)?;
    tracing::info!(pool = %pool, path = %path.display(), "created the default pool's key for sealing sensitive variables");
    Ok(key)
}

/// Re-seals a task's sensitive values, held for the master key, for its pool's workers.
#[derive(Clone)]
pub struct Sealer {
    master: Arc<MasterKey>,
    log: EventLog,
}

impl Sealer {
    /// A sealer reading the pools' keys from the log's pool documents.
    pub fn new(master: Arc<MasterKey>, log: EventLog) -> Sealer {
        Sealer { master, log }
    }

    /// The message as it goes on the wire: each sensitive value opened with the master key
    /// and sealed for the pool's registered key, bound to the task and attempt. A value that
    /// cannot be re-sealed stays sealed for the master key, which no worker can open: the
    /// worker refuses the task and says why (never runs it without the value).
    pub fn for_wire(&self, task: &TaskMessage) -> Option<TaskMessage> {
        if task.sensitive_variables.is_empty() {
            return None;
        }
        let mut wire = task.clone();
        match self.reseal(task) {
            Ok(values) => wire.sensitive_variables = values,
            Err(e) => {
                tracing::error!(task.id = %task.task, pool = %task.pool, error = %e, "cannot seal the task's sensitive variables for its pool; its worker will refuse it");
            }
        }
        Some(wire)
    }

    fn reseal(
        &self,
        task: &TaskMessage,
    ) -> Result<BTreeMap<String, shoal_shared::secret::Sealed>, String> {
        // One small read of the pool's document (cached by sled), only for tasks with
        // sensitive values: the key may have been rotated since the task was planned.
        let doc: Option<PoolDoc> = self
            .log
            .doc(Proj::Pools, task.pool.as_str().as_bytes())
            .map_err(|e| e.to_string())?;
        let key = doc.and_then(|d| d.sealing_key).ok_or_else(|| {
            format!(
                "pool \"{}\" has no key (register one: shoal pool set-key)",
                task.pool
            )
        })?;
        let rest = secrets::rest_scope(&task.deployment, &task.step_name);
        let wire = secrets::wire_scope(&task.task, task.attempt);
        let mut out = BTreeMap::new();
        for (name, sealed) in &task.sensitive_variables {
            let clear = self
                .master
                .open(&rest, name, sealed)
                .map_err(|e| e.to_string())?;
            let v = secrets::seal_for_pool(&key, &wire, name, &clear).map_err(|e| e.to_string())?;
            out.insert(name.clone(), v);
        }
        Ok(out)
    }
}
