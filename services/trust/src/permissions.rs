//! What each identity may publish and subscribe, as nats-server subject lists. The sets
//! are the ones checked on nats-server 2.9.10 (docs/ARCHITECTURE.md, "Trust: identities on
//! the broker"): a worker gets exactly what its client calls, nothing of another pool or
//! worker, and no stream or consumer management.

use shoal_shared::subjects::Subjects;

/// Allowed publish and subscribe subjects of one user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permissions {
    pub publish: Vec<String>,
    pub subscribe: Vec<String>,
}

/// The planner: the only admin (streams, consumers, tasks, cancellations, control).
pub fn planner() -> Permissions {
    Permissions {
        publish: vec![">".to_owned()],
        subscribe: vec![">".to_owned()],
    }
}

/// A worker `name` of `pool`, whose JetStream API is reached through `api` (`$JS.API` on
/// the hub, `$JS.<domain>.API` through a leaf node).
///
/// Publish: the pool consumer's info (the worker binds its consumer by name and looks it
/// up, it never lists streams) and next-message requests, acks of that consumer's messages,
/// its own results, heartbeat and drain-state subjects, and reads of the package feed. Subscribe: its own inbox prefix
/// (fetched messages and every reply, including JetStream publish acks), its pool's
/// cancellations and its own control subject.
pub fn worker(subjects: &Subjects, api: &str, pool: &str, name: &str) -> Permissions {
    let p = subjects.prefix();
    let stream = subjects.tasks_stream();
    let mut publish = vec![
        format!("{api}.CONSUMER.INFO.{stream}.{pool}"),
        format!("{api}.CONSUMER.MSG.NEXT.{stream}.{pool}"),
        format!("$JS.ACK.{stream}.{pool}.>"),
        format!("{p}.results.{pool}.{name}"),
        format!("{p}.heartbeat.{pool}.{name}"),
        format!("{p}.drain-state.{pool}.{name}"),
    ];
    publish.extend(package_feed(subjects, api));
    Permissions {
        publish,
        subscribe: vec![
            format!("_INBOX_{p}.{pool}.{name}.>"),
            format!("{p}.cancel.{pool}.*"),
            format!("{p}.control.{pool}.{name}"),
        ],
    }
}

/// An integrator `name`: reads the event feed's stream (`SHOAL_EVENTS`) and nothing else.
///
/// Publish: account and stream info, direct gets of one record of the feed (by sequence,
/// or the next one on a subject from a sequence), and its own durable pull consumer, which
/// the planner makes and moves (`PUT /api/feed/consumers/<name>`): its info, next-message
/// requests and acks. It cannot create, change or delete a consumer — a push consumer would
/// have the broker deliver the feed onto any subject — nor touch another integrator's.
/// With a role, it may also send commands over NATS on `<prefix>.cmd.<role>.<name>.>`: the
/// planner reads the role and the caller from the subject, which only this identity may
/// publish on. Subscribe: its own inbox prefix ([`integrator_inbox_prefix`]) only; the
/// client must be configured with it.
pub fn integrator(subjects: &Subjects, api: &str, name: &str, role: Option<&str>) -> Permissions {
    let stream = subjects.events_stream();
    let consumer = feed_consumer(name);
    let commands = role.map(|r| format!("{}.>", subjects.commands_of(r, name)));
    Permissions {
        publish: commands
            .into_iter()
            .chain([
                format!("{api}.INFO"),
                format!("{api}.STREAM.INFO.{stream}"),
                format!("{api}.DIRECT.GET.{stream}"),
                format!("{api}.DIRECT.GET.{stream}.>"),
                format!("{api}.CONSUMER.INFO.{stream}.{consumer}"),
                format!("{api}.CONSUMER.MSG.NEXT.{stream}.{consumer}"),
                format!("$JS.ACK.{stream}.{consumer}.>"),
            ])
            .collect(),
        subscribe: vec![format!("{}.>", integrator_inbox_prefix(subjects, name))],
    }
}

/// The durable consumer of the event feed the planner keeps for integrator `name`.
pub fn feed_consumer(name: &str) -> String {
    format!("feed-{name}")
}

/// The inbox prefix an integrator's client must use ([`Subjects::integrator_inbox_prefix`]).
pub fn integrator_inbox_prefix(subjects: &Subjects, name: &str) -> String {
    subjects.integrator_inbox_prefix(name)
}

/// Reading the package feed: direct gets on its object store's stream (an object's info,
/// then its data), which read and never write or create a consumer. Every worker may read
/// every package.
fn package_feed(subjects: &Subjects, api: &str) -> [String; 2] {
    let stream = format!("OBJ_{}", subjects.packages_bucket());
    [
        format!("{api}.DIRECT.GET.{stream}"),
        format!("{api}.DIRECT.GET.{stream}.>"),
    ]
}

/// A region's leaf node as a user of the hub: the upper limit of what crosses the link,
/// the union of what its pools' workers may do (`*` in place of the worker). Both
/// directions carry the same list: a leaf connection's publish permission bounds what
/// comes from the region, its subscribe permission what the hub sends there.
///
/// With `any_pool` every pool's subjects may cross, written with `>`: nats-server 2.9.10
/// does not send the hub's wildcard interest (the results stream's `shoal.results.>`)
/// over a leaf connection whose permission has `*` in the pool's place (checked: the
/// worker's reports then find no stream).
pub fn region(subjects: &Subjects, domain: &str, pools: &[String], any_pool: bool) -> Permissions {
    let p = subjects.prefix();
    let stream = subjects.tasks_stream();
    let mut both = Vec::new();
    if any_pool {
        both.extend([
            format!("$JS.{domain}.API.CONSUMER.INFO.{stream}.>"),
            format!("$JS.{domain}.API.CONSUMER.MSG.NEXT.{stream}.>"),
            format!("$JS.ACK.{stream}.>"),
            format!("{p}.results.>"),
            format!("{p}.heartbeat.>"),
            format!("{p}.drain-state.>"),
            format!("_INBOX_{p}.>"),
            format!("{p}.cancel.>"),
            format!("{p}.control.>"),
        ]);
    }
    for pool in pools.iter().filter(|_| !any_pool) {
        both.extend([
            format!("$JS.{domain}.API.CONSUMER.INFO.{stream}.{pool}"),
            format!("$JS.{domain}.API.CONSUMER.MSG.NEXT.{stream}.{pool}"),
            format!("$JS.ACK.{stream}.{pool}.>"),
            format!("{p}.results.{pool}.*"),
            format!("{p}.heartbeat.{pool}.*"),
            format!("{p}.drain-state.{pool}.*"),
            format!("_INBOX_{p}.{pool}.>"),
            format!("{p}.cancel.{pool}.*"),
            format!("{p}.control.{pool}.*"),
        ]);
    }
    both.extend(package_feed(subjects, &format!("$JS.{domain}.API")));
    let mut subscribe = both.clone();
    // The leaf node's own loop-detection subscription.
    subscribe.push("$LDS.>".to_owned());
    Permissions {
        publish: both,
        subscribe,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_may_touch_only_its_pool_consumer_and_its_own_subjects() {
        let perms = worker(&Subjects::default(), "$JS.API", "eu-west", "eu-west-1");
        assert_eq!(
            perms.publish,
            [
                "$JS.API.CONSUMER.INFO.SHOAL_TASKS.eu-west",
                "$JS.API.CONSUMER.MSG.NEXT.SHOAL_TASKS.eu-west",
                "$JS.ACK.SHOAL_TASKS.eu-west.>",
                "shoal.results.eu-west.eu-west-1",
                "shoal.heartbeat.eu-west.eu-west-1",
                "shoal.drain-state.eu-west.eu-west-1",
                "$JS.API.DIRECT.GET.OBJ_SHOAL_PACKAGES",
                "$JS.API.DIRECT.GET.OBJ_SHOAL_PACKAGES.>",
            ]
        );
        assert_eq!(
            perms.subscribe,
            [
                "_INBOX_shoal.eu-west.eu-west-1.>",
                "shoal.cancel.eu-west.*",
                "shoal.control.eu-west.eu-west-1",
            ]
        );
        let all = perms.publish.iter().chain(&perms.subscribe);
        assert!(
            all.clone()
                .all(|s| !s.contains("STREAM") && !s.contains("CREATE") && s != ">")
        );
        assert!(all.clone().all(|s| !s.starts_with("shoal.tasks")));
    }
}
