//! Tests of signing and verification: each refusal, rotation, and that any single changed
//! byte of payload or header is refused.

use super::*;
use proptest::prelude::*;

const HOUR: u64 = 3_600_000;

fn pool(s: &str) -> PoolName {
    PoolName::parse(s).expect("valid")
}

fn task(attempt: u32) -> Binding {
    Binding {
        kind: Kind::Task,
        pool: pool("eu-west"),
        id: "0195f1a8-0000-7000-8000-000000000001".into(),
        attempt: Some(attempt),
    }
}

fn key() -> SigningKey {
    SigningKey::from_seed([7; 32]).expect("valid seed")
}

fn now() -> Timestamp {
    Timestamp(1_800_000_000_000)
}

fn trusted(k: &SigningKey) -> TrustedKeys {
    TrustedKeys::of([k.public()])
}

#[test]
fn a_signed_message_verifies_and_says_what_it_is_bound_to() {
    let k = key();
    let header = k.sign(&task(1), b"payload", now(), HOUR);
    let claims = trusted(&k)
        .verify(Some(&header), &task(1), b"payload", now())
        .expect("verifies");
    assert_eq!(claims.binding, task(1));
    assert_eq!(&claims.key_id, k.key_id());
    assert_eq!(claims.expires_at, now().plus_millis(HOUR));
}

#[test]
fn an_unsigned_message_is_refused() {
    let got = trusted(&key()).verify(None, &task(1), b"payload", now());
    assert_eq!(got, Err(Refusal::Unsigned));
}

#[test]
fn an_altered_payload_is_refused_as_a_bad_signature() {
    let k = key();
    let header = k.sign(&task(1), b"echo hi", now(), HOUR);
    let got = trusted(&k).verify(Some(&header), &task(1), b"rm -rf /", now());
    assert!(matches!(got, Err(Refusal::BadSignature { .. })), "{got:?}");
}

#[test]
fn a_key_that_is_not_trusted_is_refused_naming_the_trusted_ones() {
    let mallory = SigningKey::from_seed([9; 32]).expect("valid");
    let header = mallory.sign(&task(1), b"p", now(), HOUR);
    let got = trusted(&key()).verify(Some(&header), &task(1), b"p", now());
    let Err(Refusal::UnknownKey { key_id, trusted }) = got else {
        panic!("{got:?}")
    };
    assert_eq!(key_id, mallory.key_id().as_str());
    assert_eq!(trusted, key().key_id().as_str());
}

#[test]
fn an_expired_signature_is_refused_but_clock_skew_is_tolerated() {
    let k = key();
    let header = k.sign(&task(1), b"p", now(), HOUR);
    let within_skew = now().plus_millis(HOUR + MAX_CLOCK_SKEW_MS);
    assert!(
        trusted(&k)
            .verify(Some(&header), &task(1), b"p", within_skew)
            .is_ok()
    );
    let got = trusted(&k).verify(Some(&header), &task(1), b"p", within_skew.plus_millis(1));
    assert!(matches!(got, Err(Refusal::Expired { .. })), "{got:?}");
}

#[test]
fn a_signature_issued_in_the_future_beyond_skew_is_refused() {
    let k = key();
    let header = k.sign(
        &task(1),
        b"p",
        now().plus_millis(MAX_CLOCK_SKEW_MS + 1),
        HOUR,
    );
    let got = trusted(&k).verify(Some(&header), &task(1), b"p", now());
    assert!(matches!(got, Err(Refusal::FromTheFuture { .. })), "{got:?}");
}

#[test]
fn a_message_replayed_into_another_pool_is_refused() {
    let k = key();
    let header = k.sign(&task(1), b"p", now(), HOUR);
    let mut elsewhere = task(1);
    elsewhere.pool = pool("us-east");
    let got = trusted(&k).verify(Some(&header), &elsewhere, b"p", now());
    assert!(matches!(got, Err(Refusal::WrongPool { .. })), "{got:?}");
}

#[test]
fn a_message_replayed_as_another_attempt_or_task_or_kind_is_refused() {
    let k = key();
    let header = k.sign(&task(1), b"p", now(), HOUR);
    let t = trusted(&k);
    let got = t.verify(Some(&header), &task(2), b"p", now());
    assert!(matches!(got, Err(Refusal::WrongAttempt { .. })), "{got:?}");
    let mut other = task(1);
    other.id = "another".into();
    let got = t.verify(Some(&header), &other, b"p", now());
    assert!(matches!(got, Err(Refusal::BadSignature { .. })), "{got:?}");
    let mut cancel = task(1);
    cancel.kind = Kind::Cancel;
    let got = t.verify(Some(&header), &cancel, b"p", now());
    assert!(matches!(got, Err(Refusal::BadSignature { .. })), "{got:?}");
}

#[test]
fn both_keys_verify_during_a_rotation() {
    let (old, new) = (key(), SigningKey::from_seed([8; 32]).expect("valid"));
    let file = format!(
        "# planner keys\n{}\n\n{}\n",
        old.public().to_line(),
        new.public().to_line()
    );
    let t = TrustedKeys::parse(&file).expect("parses");
    assert_eq!(t.key_ids().len(), 2);
    for k in [&old, &new] {
        let header = k.sign(&task(1), b"p", now(), HOUR);
        assert!(t.verify(Some(&header), &task(1), b"p", now()).is_ok());
    }
}

#[test]
fn a_key_file_round_trips_and_never_shows_the_secret_in_debug() {
    let k = SigningKey::generate().expect("random");
    let again = SigningKey::parse(&k.to_file_text()).expect("parses");
    assert_eq!(again.public(), k.public());
    let shown = format!("{k:?}");
    assert!(!shown.contains(&crate::hex::encode(&k.seed)), "{shown}");
    assert!(SigningKey::parse("not a key").is_err());
}

#[test]
fn a_trusted_key_line_whose_id_does_not_match_its_key_is_refused() {
    let real = key().public().to_line();
    let line = real.replacen(key().key_id().as_str(), "0000000000000000", 1);
    assert!(matches!(
        TrustedKeys::parse(&line),
        Err(KeyError::BadPublicKey { line: 1, .. })
    ));
    assert!(matches!(
        TrustedKeys::parse("# none\n"),
        Err(KeyError::NoTrustedKey)
    ));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_single_changed_byte_of_payload_or_header_is_refused(
        payload in proptest::collection::vec(any::<u8>(), 1..200),
        in_header in any::<bool>(),
        at in any::<usize>(),
        delta in 1u8..=255,
    ) {
        let k = key();
        // The middle message of a batch of three: its header has a path to the root.
        let (first, last) = (task(1), task(5));
        let batch: [(&Binding, &[u8]); 3] = [(&first, b"a"), (&task(3), &payload), (&last, b"c")];
        let header = k.sign_batch(&batch, now(), HOUR).swap_remove(1);
        let t = trusted(&k);
        prop_assert!(t.verify(Some(&header), &task(3), &payload, now()).is_ok());
        if in_header {
            let mut bytes = header.into_bytes();
            let i = at % bytes.len();
            bytes[i] = bytes[i].wrapping_add(delta);
            // A header that is no longer text cannot even be read: refused too.
            if let Ok(changed) = String::from_utf8(bytes) {
                prop_assert!(t.verify(Some(&changed), &task(3), &payload, now()).is_err());
            }
        } else {
            let mut changed = payload.clone();
            let i = at % changed.len();
            changed[i] = changed[i].wrapping_add(delta);
            prop_assert!(t.verify(Some(&header), &task(3), &changed, now()).is_err());
        }
    }
}

#[test]
fn each_message_of_a_batch_verifies_on_its_own_and_only_with_its_own_payload() {
    let k = key();
    let bindings: Vec<Binding> = (1..=5).map(task).collect();
    let payloads: Vec<Vec<u8>> = (1..=5u8).map(|i| vec![i; 40]).collect();
    let messages: Vec<(&Binding, &[u8])> = bindings
        .iter()
        .zip(&payloads)
        .map(|(b, p)| (b, p.as_slice()))
        .collect();
    let headers = k.sign_batch(&messages, now(), HOUR);
    let t = trusted(&k);
    for ((binding, payload), header) in messages.iter().zip(&headers) {
        assert!(t.verify(Some(header), binding, payload, now()).is_ok());
        // Verified again from the remembered root: still bound to its own payload.
        let got = t.verify(Some(header), binding, b"another payload", now());
        assert!(matches!(got, Err(Refusal::BadSignature { .. })), "{got:?}");
    }
    // One message's header does not vouch for another message of the batch.
    let got = t.verify(Some(&headers[0]), &bindings[1], &payloads[1], now());
    assert!(got.is_err(), "{got:?}");
}

#[test]
fn a_batch_larger_than_one_path_can_hold_is_signed_in_parts_that_each_verify() {
    let k = key();
    let t = trusted(&k);
    let bindings: Vec<Binding> = (0..300).map(|_| task(1)).collect();
    let batch: Vec<(&Binding, &[u8])> = bindings.iter().map(|b| (b, &b"p"[..])).collect();
    let headers = k.sign_batch(&batch, now(), HOUR);
    assert_eq!(headers.len(), 300);
    for h in &headers {
        assert!(t.verify(Some(h), &task(1), b"p", now()).is_ok(), "{h}");
    }
}

#[test]
fn a_signature_whose_scalar_is_not_reduced_is_refused() {
    // s + L satisfies the same equation as s; RFC 8032 (and ring before) require s < L.
    const L: [u8; 32] = [
        0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde,
        0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
    ];
    let k = key();
    let text = k.sign(&task(1), b"echo hi", now(), HOUR);
    assert!(
        trusted(&k)
            .verify(Some(&text), &task(1), b"echo hi", now())
            .is_ok()
    );
    let mut h = super::header::Header::parse(&text).expect("parses");
    let mut carry = 0u16;
    for (s, l) in h.sig[32..].iter_mut().zip(L) {
        let sum = u16::from(*s) + u16::from(l) + carry;
        *s = sum.to_le_bytes()[0];
        carry = sum >> 8;
    }
    let got = trusted(&k).verify(Some(&h.encode()), &task(1), b"echo hi", now());
    assert!(matches!(got, Err(Refusal::BadSignature { .. })), "{got:?}");
}

#[test]
fn a_trusted_key_that_is_not_a_point_of_the_curve_is_refused() {
    let bytes = (2u8..)
        .map(|y| {
            let mut b = [0u8; 32];
            b[0] = y;
            b
        })
        .find(|b| ed25519_dalek::VerifyingKey::from_bytes(b).is_err())
        .expect("about half of all encodings are not points");
    let line = format!(
        "ed25519 {} {}",
        KeyId::of(&bytes).as_str(),
        crate::hex::encode(&bytes)
    );
    let got = TrustedKeys::parse(&line);
    assert!(
        matches!(got, Err(KeyError::BadPublicKey { line: 1, .. })),
        "{got:?}"
    );
}
