//! The signature of a webhook delivery, as the planner makes it and a receiver checks it:
//! `Shoal-Webhook-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`.

/// The header with the signature.
pub const SIGNATURE_HEADER: &str = "Shoal-Webhook-Signature";

/// The signature header's value of `body` sent at `t` (unix seconds).
pub fn signature(secret: &str, t: i64, body: &[u8]) -> String {
    format!("t={t},v1={}", crate::hex::encode(&mac(secret, t, body)))
}

fn mac(secret: &str, t: i64, body: &[u8]) -> Vec<u8> {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let mut ctx = ring::hmac::Context::with_key(&key);
    ctx.update(format!("{t}.").as_bytes());
    ctx.update(body);
    ctx.sign().as_ref().to_vec()
}

/// Checks a delivery: the header's HMAC of `body` with `secret`, made no more than
/// `tolerance_secs` from `now` (unix seconds). What is wrong, if anything.
///
/// # Errors
/// A malformed header, a signature that does not match, or one too old or too new.
pub fn verify(
    secret: &str,
    header: &str,
    body: &[u8],
    now: i64,
    tolerance_secs: i64,
) -> Result<(), String> {
    let mut t = None;
    let mut v1 = None;
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", x)) => t = x.parse::<i64>().ok(),
            Some(("v1", x)) => v1 = crate::hex::decode(x),
            _ => {}
        }
    }
    let (Some(t), Some(v1)) = (t, v1) else {
        return Err("the header is not t=<seconds>,v1=<hex>".into());
    };
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let mut msg = format!("{t}.").into_bytes();
    msg.extend_from_slice(body);
    ring::hmac::verify(&key, &msg, &v1).map_err(|_| "the signature does not match".to_owned())?;
    if (now - t).abs() > tolerance_secs {
        return Err(format!("signed {} s from now", now - t));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_hmac_sha256_of_time_dot_body() {
        // printf '1700000000.{"a":1}' | openssl dgst -sha256 -hmac whsec_test
        let sig = signature("whsec_test", 1_700_000_000, br#"{"a":1}"#);
        assert_eq!(
            sig,
            "t=1700000000,v1=38877139021993b830af32feea6e18a8da83eb2f6e49ee50bd9e4cf4ca4d3789"
        );
        assert_eq!(
            verify("whsec_test", &sig, br#"{"a":1}"#, 1_700_000_100, 300),
            Ok(())
        );
        assert!(verify("whsec_test", &sig, br#"{"a":2}"#, 1_700_000_100, 300).is_err());
        assert!(verify("whsec_other", &sig, br#"{"a":1}"#, 1_700_000_100, 300).is_err());
        assert!(verify("whsec_test", &sig, br#"{"a":1}"#, 1_700_001_000, 300).is_err());
        assert!(verify("whsec_test", "v1=00", br#"{"a":1}"#, 1_700_000_000, 300).is_err());
    }
}
