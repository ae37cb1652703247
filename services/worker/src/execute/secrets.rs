//! A task's sensitive variables on the worker: opened with the pool's secret key just
//! before the script starts (a value that does not open refuses the whole task), given to
//! the script as environment variables, and masked in every output line.
//!
//! What masking covers: every occurrence of a value within one output line, and, for a
//! value of several lines, each of its lines (so a multi-line secret printed as is is
//! masked line by line). Not covered: a value the script transforms (base64, reversed, cut
//! into pieces printed on separate lines), and a value split by the 64 KiB cut of an
//! over-long line.

use shoal_runtime::secrets::{self, PoolSecretKey};
use shoal_shared::messages::TaskMessage;
use shoal_shared::secret::{MASK, SecretString};
use std::borrow::Cow;
use std::sync::Arc;

/// The task's sensitive variables, opened.
#[derive(Default)]
pub struct Opened {
    values: Vec<(String, SecretString)>,
}

impl Opened {
    /// Opens every sensitive variable of `task` with one of `keys`.
    ///
    /// # Errors
    /// The first value that does not open, and why (names and key ids, never a value).
    pub fn open(task: &TaskMessage, keys: &[PoolSecretKey]) -> Result<Opened, String> {
        let scope = secrets::wire_scope(&task.task, task.attempt);
        let mut values = Vec::with_capacity(task.sensitive_variables.len());
        for (name, sealed) in &task.sensitive_variables {
            let value = secrets::open_for_pool(keys, &scope, name, sealed)
                .map_err(|e| format!("refused: {e}; the script was not run"))?;
            values.push((name.clone(), value));
        }
        Ok(Opened { values })
    }

    /// Name and value of each, for the script's environment.
    pub fn env(&self) -> impl Iterator<Item = (&str, &str)> {
        self.values.iter().map(|(n, v)| (n.as_str(), v.expose()))
    }

    /// What masks these values in output.
    pub fn masker(&self) -> Masker {
        let mut patterns: Vec<SecretString> = Vec::new();
        for (_, v) in &self.values {
            let v = v.expose();
            let lines = v.lines().map(|l| l.trim_end_matches('\r'));
            for p in std::iter::once(v).chain(lines) {
                if !p.is_empty() && !patterns.iter().any(|q| q.expose() == p) {
                    patterns.push(SecretString::new(p));
                }
            }
        }
        // Longest first, so a value containing another is masked whole.
        patterns.sort_by_key(|p| std::cmp::Reverse(p.expose().len()));
        Masker {
            patterns: Arc::new(patterns),
        }
    }
}

/// Replaces sensitive values in output lines by `********`.
#[derive(Clone, Default)]
pub struct Masker {
    patterns: Arc<Vec<SecretString>>,
}

impl std::fmt::Debug for Masker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Masker({} patterns)", self.patterns.len())
    }
}

impl Masker {
    /// The line with every sensitive value in it masked.
    pub fn mask<'a>(&self, line: &'a str) -> Cow<'a, str> {
        let mut out = Cow::Borrowed(line);
        for p in self.patterns.iter() {
            if out.contains(p.expose()) {
                out = Cow::Owned(out.replace(p.expose(), MASK));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opened(values: &[(&str, &str)]) -> Opened {
        Opened {
            values: values
                .iter()
                .map(|(n, v)| ((*n).to_owned(), SecretString::new(*v)))
                .collect(),
        }
    }

    #[test]
    fn every_occurrence_of_a_value_in_a_line_is_masked() {
        let m = opened(&[("PW", "hunter2"), ("TOKEN", "hunter2-long")]).masker();
        assert_eq!(
            m.mask("pw=hunter2 token=hunter2-long again hunter2"),
            "pw=******** token=******** again ********"
        );
        assert_eq!(m.mask("nothing here"), "nothing here");
    }

    #[test]
    fn each_line_of_a_multi_line_value_is_masked() {
        let m = opened(&[("KEY", "-----BEGIN-----\r\nAAAAsecretBBBB\n-----END-----")]).masker();
        assert_eq!(m.mask("AAAAsecretBBBB"), "********");
        assert_eq!(m.mask("x -----END----- y"), "x ******** y");
    }
}
