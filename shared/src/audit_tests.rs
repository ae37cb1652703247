use super::*;
use crate::codec::encode;
use crate::ids::EventId;
use crate::names::PoolName;
use crate::signed::SigningKey;

/// A chain of `n` records (pools removed), each linked to the one before, as stored.
fn chain(n: u64) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = Vec::new();
    for seq in 1..=n {
        let event = Event::PoolRemoved {
            pool: PoolName::parse(format!("p{seq}")).expect("valid"),
        };
        let prev = out.last().map_or(vec![0; 32], |b| record_hash(b).to_vec());
        let env = Envelope {
            seq,
            event_id: EventId::new(),
            time: Timestamp(1_000 + i64::try_from(seq).unwrap_or(0)),
            stream: event.stream(),
            event_type: event.event_type().to_owned(),
            schema_version: 1,
            correlation_id: None,
            causation_id: None,
            payload: encode(&event).expect("encodes"),
            prev_hash: prev,
            actor: None,
        };
        out.push(encode(&env).expect("encodes"));
    }
    out
}

/// The export of `records` signed with `key`, as lines.
fn export(records: &[Vec<u8>], key: &SigningKey) -> Vec<String> {
    let first = 1;
    let last = records.len() as u64;
    let mut lines = vec![Line::Header {
        format: FORMAT.into(),
        from: first,
        to: last,
        deployment: None,
        exported_at: Timestamp(9),
    }];
    for r in records {
        lines.push(record_line(r, None).expect("a record"));
    }
    let hash = record_hash(records.last().expect("some"));
    let claims = crate::signed::ExportClaims {
        from: first,
        to: last,
        deployment: None,
        hash: &hash,
    };
    lines.push(Line::Head(SignedHead {
        seq: last,
        hash: crate::hex::encode(&hash),
        key: key.public().to_line(),
        signature: crate::hex::encode(&key.sign_export(&claims)),
        signed_at: Timestamp(10),
    }));
    lines
        .iter()
        .map(|l| serde_json::to_string(l).expect("json"))
        .collect()
}

fn check(lines: &[String], trusted: Option<&TrustedKeys>) -> Result<Verified, Bad> {
    verify(lines.join("\n").as_bytes(), trusted)
}

fn key() -> SigningKey {
    SigningKey::from_seed([7; 32]).expect("a key")
}

#[test]
fn an_intact_export_verifies_against_the_planners_key() {
    let key = key();
    let lines = export(&chain(5), &key);
    let trusted = TrustedKeys::of([key.public()]);
    let v = check(&lines, Some(&trusted)).expect("verifies");
    assert_eq!((v.first, v.last, v.records, v.in_scope), (1, 5, 5, 5));
    assert!(v.key_trusted);
    assert_eq!(v.key_id, key.key_id().as_str());
}

#[test]
fn one_changed_byte_names_its_record() {
    let key = key();
    let records = chain(5);
    // The bytes changed and the hash made to match: the next record no longer links.
    let mut forged = records.clone();
    let env: Envelope = crate::codec::decode("r", &forged[2]).expect("decodes");
    let mut env = env;
    env.time = Timestamp(1);
    forged[2] = encode(&env).expect("encodes");
    let e = check(&export(&forged, &key), None).expect_err("broken chain");
    assert_eq!(e.seq, Some(4), "{e}");
    assert!(e.why.contains("does not link to record 3"), "{e}");
    // One character of a line changed: its hash no longer matches, or what it shows.
    let lines = export(&records, &key);
    let mut shown = lines.clone();
    shown[3] = shown[3].replace("\"p3\"", "\"p9\"");
    let e = check(&shown, None).expect_err("changed view");
    assert_eq!((e.line, e.seq), (4, Some(3)), "{e}");
    assert!(e.why.contains("not what its bytes say"), "{e}");
    let mut hashed = lines.clone();
    let Ok(Line::Record { bytes, .. }) = serde_json::from_str::<Line>(&hashed[2]) else {
        panic!("a record line")
    };
    let mut raw = base64::engine::general_purpose::STANDARD
        .decode(&bytes)
        .expect("base64");
    raw[10] ^= 1;
    let flipped = base64::engine::general_purpose::STANDARD.encode(&raw);
    hashed[2] = hashed[2].replace(&bytes, &flipped);
    let e = check(&hashed, None).expect_err("flipped byte");
    assert_eq!(e.seq, Some(2), "{e}");
    assert!(e.why.contains("hash does not match"), "{e}");
}

#[test]
fn a_missing_record_a_cut_off_end_or_another_key_fails() {
    let key = key();
    let lines = export(&chain(5), &key);
    let mut gap = lines.clone();
    gap.remove(3);
    let e = check(&gap, None).expect_err("gap");
    assert!(e.why.contains("record 3 is missing"), "{e}");
    let e = check(&lines[..lines.len() - 1], None).expect_err("no head");
    assert!(e.why.contains("no signed head"), "{e}");
    let other = SigningKey::from_seed([8; 32]).expect("a key");
    let e = check(&lines, Some(&TrustedKeys::of([other.public()]))).expect_err("untrusted");
    assert!(e.why.contains("is not trusted"), "{e}");
    // Signed by another key that names itself: intact, but not the planner's.
    let e = check(
        &export(&chain(5), &other),
        Some(&TrustedKeys::of([key.public()])),
    )
    .expect_err("another key");
    assert!(e.why.contains("is not trusted"), "{e}");
}

#[test]
fn a_head_signed_in_the_log_cannot_end_an_export_cut_short() {
    let key = key();
    let records = chain(5);
    // The planner signed record 3's hash at an interval (a LogHeadSigned anyone can read).
    let h3 = record_hash(&records[2]);
    let logged = key.sign_head(3, &h3);
    // An export cut after record 3, ending with that signature as its head.
    let mut lines = export(&records[..3], &key);
    let last = lines.len() - 1;
    lines[last] = serde_json::to_string(&Line::Head(SignedHead {
        seq: 3,
        hash: crate::hex::encode(&h3),
        key: key.public().to_line(),
        signature: crate::hex::encode(&logged),
        signed_at: Timestamp(10),
    }))
    .expect("json");
    let e = check(&lines, Some(&TrustedKeys::of([key.public()]))).expect_err("not an export's");
    assert!(e.why.contains("does not verify"), "{e}");
    // A header that claims another range than was signed fails too.
    let mut lines = export(&records, &key);
    lines[0] = lines[0].replace("\"from\":1", "\"from\":2");
    assert!(check(&lines, None).is_err());
}
