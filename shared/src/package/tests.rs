use super::*;

/// Deterministic bytes that do not repeat (xorshift), so chunk boundaries fall as in a real
/// binary.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.max(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()[0]
        })
        .collect()
}

fn cut(bytes: &[u8]) -> (Vec<Chunk>, u64, Sha256) {
    let mut chunker = Chunker::new(bytes);
    let chunks: Vec<Chunk> = chunker.by_ref().map(|c| c.expect("reads")).collect();
    let (size, sha) = chunker.finish();
    (chunks, size, sha)
}

#[test]
fn chunks_put_back_together_are_the_file_and_the_whole_digest_is_the_files() {
    let file = noise(3 * 1024 * 1024 + 17, 7);
    let (chunks, size, sha) = cut(&file);
    let joined: Vec<u8> = chunks.iter().flat_map(|c| c.data.clone()).collect();
    assert_eq!(joined, file);
    assert_eq!((size, sha), (file.len() as u64, Sha256::of(&file)));
    let last = chunks.len() - 1;
    for (i, c) in chunks.iter().enumerate() {
        assert_eq!(c.chunk.sha256, Sha256::of(&c.data));
        assert!(c.chunk.size <= MAX_CHUNK, "{}", c.chunk.size);
        assert!(i == last || c.chunk.size >= MIN_CHUNK, "{}", c.chunk.size);
    }
    assert!(
        (20..=100).contains(&chunks.len()),
        "about 48 chunks of 64 KiB on average: {}",
        chunks.len()
    );
}

#[test]
fn a_change_in_one_place_changes_only_the_chunks_around_it() {
    let old = noise(4 * 1024 * 1024, 11);
    let mut new = old.clone();
    // 1 % of the file rewritten in its middle, and 100 bytes inserted near the start.
    let mid = new.len() / 2;
    let change = noise(old.len() / 100, 99);
    new[mid..mid + change.len()].copy_from_slice(&change);
    new.splice(1000..1000, noise(100, 5));
    let (old_chunks, ..) = cut(&old);
    let (new_chunks, ..) = cut(&new);
    let had: std::collections::HashSet<Sha256> =
        old_chunks.iter().map(|c| c.chunk.sha256).collect();
    let moved: u64 = new_chunks
        .iter()
        .filter(|c| !had.contains(&c.chunk.sha256))
        .map(|c| u64::from(c.chunk.size))
        .sum();
    let share = moved as f64 / new.len() as f64;
    assert!(
        share < 0.12,
        "{:.1} % of the new version is in chunks the old one lacks",
        share * 100.0
    );
    assert!(moved >= change.len() as u64, "the change itself must move");
}

#[test]
fn the_same_bytes_are_cut_the_same_way() {
    let file = noise(1024 * 1024, 3);
    let a: Vec<ChunkRef> = cut(&file).0.iter().map(|c| c.chunk).collect();
    let b: Vec<ChunkRef> = cut(&file).0.iter().map(|c| c.chunk).collect();
    assert_eq!(a, b);
}

#[test]
fn an_empty_file_has_no_chunks() {
    let (chunks, size, sha) = cut(&[]);
    assert!(chunks.is_empty());
    assert_eq!((size, sha), (0, Sha256::of(&[])));
}

#[test]
fn a_chunk_with_one_byte_changed_is_refused() {
    let data = noise(5000, 1);
    let chunk = ChunkRef {
        sha256: Sha256::of(&data),
        size: 5000,
    };
    assert!(verify_chunk(&chunk, &data).is_ok());
    let mut bad = data.clone();
    bad[17] ^= 1;
    let err = verify_chunk(&chunk, &bad).expect_err("changed");
    assert!(err.contains(&chunk.sha256.to_hex()), "{err}");
    assert!(verify_chunk(&chunk, &data[..4999]).is_err());
}

#[test]
fn a_manifest_whose_chunks_do_not_add_up_is_refused() {
    let chunk = ChunkRef {
        sha256: Sha256::of(b"x"),
        size: 10,
    };
    let mut m = Manifest {
        id: PackageId::parse("web").expect("valid"),
        version: semver::Version::new(1, 2, 3),
        size: 20,
        sha256: Sha256::of(b"whole"),
        chunks: vec![chunk, chunk],
    };
    assert!(m.check().is_ok());
    m.size = 21;
    let err = m.check().expect_err("does not add up");
    assert!(
        err.contains("web 1.2.3") && err.contains("20 bytes"),
        "{err}"
    );
}

#[test]
fn a_digest_is_lowercase_hex_in_every_encoding() {
    let d = Sha256::of(b"abc");
    let json = serde_json::to_string(&d).expect("encodes");
    assert_eq!(
        json,
        "\"ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad\""
    );
    let back: Sha256 = crate::codec::decode("digest", &crate::codec::encode(&d).expect("encodes"))
        .expect("decodes");
    assert_eq!(back, d);
    assert!(Sha256::parse(&d.to_hex().to_uppercase()).is_err());
    assert!(Sha256::parse("abc").is_err());
}
