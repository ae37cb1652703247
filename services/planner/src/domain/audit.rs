//! The audit trail's own facts: the planner's signatures of its log's head, and who moved an
//! integrator's place in the event feed. A signature
//! vouches for the record it names and, through the hash chain, for every record before it;
//! it changes no projection (audits read the log, never the projections).

use super::decide::NewEvent;
use shoal_shared::events::Event;

/// `RecordHeadSignature`: the signature, as a fact in the log.
pub(super) fn head_signed(
    seq: u64,
    hash: &[u8; 32],
    key_id: &str,
    signature: &[u8],
) -> Vec<NewEvent> {
    vec![NewEvent::new(Event::LogHeadSigned {
        seq,
        hash: shoal_shared::hex::encode(hash),
        key_id: key_id.to_owned(),
        signature: shoal_shared::hex::encode(signature),
    })]
}

/// `RecordFeedConsumer`: an integrator's consumer of the feed, as made.
pub(super) fn feed_consumer_set(
    integrator: &str,
    consumer: &str,
    after: u64,
    filter: &Option<String>,
) -> Vec<NewEvent> {
    vec![NewEvent::new(Event::FeedConsumerSet {
        integrator: integrator.to_owned(),
        consumer: consumer.to_owned(),
        after,
        filter: filter.clone(),
    })]
}
