//! The Merkle tree that lets the planner sign many messages with one Ed25519 signature: each
//! message's leaf commits to its claims and payload, the signature covers the root, and each
//! message carries the path from its leaf to the root. A worker that has verified a root's
//! signature once checks the next message of the same batch with a few SHA-256s
//! ([`super::TrustedKeys`] keeps the roots it verified).

use ring::digest::{SHA256, digest};

/// A SHA-256.
pub(super) type Hash = [u8; 32];

/// One step from a node towards the root: its sibling, on the left or on the right.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
    Left(Hash),
    Right(Hash),
}

fn sha(parts: &[&[u8]]) -> Hash {
    let mut ctx = ring::digest::Context::new(&SHA256);
    for p in parts {
        ctx.update(p);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// The leaf of a message: its canonical claims ([`super::canonical_claims`]) and its
/// payload's SHA-256. Leaves and inner nodes hash with different prefixes, so neither passes for the
/// other.
pub(super) fn leaf(claims: &str, payload: &[u8]) -> Hash {
    let payload = digest(&SHA256, payload);
    sha(&[&[0], claims.as_bytes(), b"\n", payload.as_ref()])
}

fn node(left: &Hash, right: &Hash) -> Hash {
    sha(&[&[1], left, right])
}

/// The root over `leaves` and each leaf's path to it. An odd node out is carried up a level
/// unchanged (its path has no step there).
pub(super) fn build(leaves: &[Hash]) -> (Hash, Vec<Vec<Step>>) {
    let mut paths = vec![Vec::new(); leaves.len()];
    let mut at: Vec<usize> = (0..leaves.len()).collect();
    let mut level = leaves.to_vec();
    while level.len() > 1 {
        for (path, p) in paths.iter_mut().zip(at.iter_mut()) {
            if !p.is_multiple_of(2) {
                path.push(Step::Left(level[*p - 1]));
            } else if let Some(right) = level.get(*p + 1) {
                path.push(Step::Right(*right));
            }
            *p /= 2;
        }
        level = level
            .chunks(2)
            .map(|pair| match pair {
                [l, r] => node(l, r),
                [only] => *only,
                _ => unreachable!("chunks(2) yields one or two"),
            })
            .collect();
    }
    (level.first().copied().unwrap_or_default(), paths)
}

/// The root a leaf and its path lead to.
pub(super) fn root_of(leaf: Hash, path: &[Step]) -> Hash {
    path.iter().fold(leaf, |acc, step| match step {
        Step::Left(sibling) => node(sibling, &acc),
        Step::Right(sibling) => node(&acc, sibling),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_leaf_of_every_batch_size_leads_to_the_root() {
        for n in 1..=17 {
            let leaves: Vec<Hash> = (0..n).map(|i| leaf(&format!("m{i}"), b"p")).collect();
            let (root, paths) = build(&leaves);
            for (l, path) in leaves.iter().zip(&paths) {
                assert_eq!(root_of(*l, path), root, "batch of {n}");
            }
        }
    }

    #[test]
    fn a_leaf_of_another_batch_or_position_does_not_lead_to_the_root() {
        let leaves: Vec<Hash> = (0..4).map(|i| leaf(&format!("m{i}"), b"p")).collect();
        let (root, paths) = build(&leaves);
        assert_ne!(root_of(leaves[0], &paths[1]), root);
        assert_ne!(root_of(leaf("m9", b"p"), &paths[0]), root);
    }
}
