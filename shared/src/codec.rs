//! The MessagePack codec used on the wire and in the log (rmp-serde, named fields, so fields
//! can be added without breaking older readers).

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Largest message any shoal decoder accepts; larger ones are rejected before decoding.
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// Why bytes could not be turned into a value, or a value into bytes.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("message of {size} bytes is larger than the limit of {MAX_MESSAGE_BYTES} bytes")]
    TooLarge { size: usize },
    // The cause is part of the message (it is what users need to read), not a `source`.
    #[error("malformed {what}: {cause}")]
    Malformed {
        what: &'static str,
        cause: rmp_serde::decode::Error,
    },
    #[error("cannot encode {what}: {cause}")]
    Encode {
        what: &'static str,
        cause: rmp_serde::encode::Error,
    },
}

/// Encodes a value as MessagePack with named fields.
///
/// # Errors
/// Only for values serde cannot represent (not the case for shoal's own types).
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    rmp_serde::to_vec_named(value).map_err(|cause| CodecError::Encode {
        what: std::any::type_name::<T>(),
        cause,
    })
}

/// Decodes a value; `what` names it in the error.
///
/// # Errors
/// Oversized input or bytes that are not a valid `T`.
pub fn decode<T: DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T, CodecError> {
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(CodecError::TooLarge { size: bytes.len() });
    }
    rmp_serde::from_slice(bytes).map_err(|cause| CodecError::Malformed { what, cause })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::*;
    use crate::events::{Envelope, Event, PlannedStep, PlannedTask};
    use crate::health::*;
    use crate::ids::*;
    use crate::messages::*;
    use crate::names::*;
    use crate::resolve::PoolRule;
    use crate::time::Timestamp;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn name() -> impl Strategy<Value = String> {
        "[a-z0-9_-]{1,20}"
    }
    fn pool() -> impl Strategy<Value = PoolName> {
        name().prop_map(|s| PoolName::parse(s).expect("strategy yields valid names"))
    }
    fn worker() -> impl Strategy<Value = WorkerName> {
        name().prop_map(|s| WorkerName::parse(s).expect("valid"))
    }
    fn uuid() -> impl Strategy<Value = uuid::Uuid> {
        any::<u128>().prop_map(uuid::Uuid::from_u128)
    }
    fn ts() -> impl Strategy<Value = Timestamp> {
        (0i64..4_000_000_000_000).prop_map(Timestamp)
    }
    fn action() -> impl Strategy<Value = Action> {
        prop_oneof![
            (any::<String>(), proptest::option::of(name()))
                .prop_map(|(script, shell)| Action::Script { script, shell }),
            Just(Action::Noop),
        ]
    }
    fn outcome() -> impl Strategy<Value = Outcome> {
        prop_oneof![
            Just(Outcome::Succeeded),
            Just(Outcome::Failed),
            Just(Outcome::TimedOut),
            Just(Outcome::Cancelled)
        ]
    }
    fn lines() -> impl Strategy<Value = Vec<OutputLine>> {
        proptest::collection::vec(
            (any::<bool>(), ts(), any::<String>()).prop_map(|(e, at, line)| OutputLine {
                stream: if e {
                    OutputStream::Stderr
                } else {
                    OutputStream::Stdout
                },
                at,
                line,
            }),
            0..5,
        )
    }
    fn step() -> impl Strategy<Value = StepSpec> {
        (
            any::<String>(),
            action(),
            proptest::collection::vec(name(), 0..3),
            proptest::option::of(pool()),
            proptest::option::of(any::<u64>()),
            proptest::option::of(any::<u32>()),
            proptest::collection::btree_map("[A-Z_]{1,8}", any::<String>(), 0..3),
        )
            .prop_map(
                |(name, action, roles, pool, timeout_secs, max_parallel, variables)| StepSpec {
                    name,
                    action,
                    roles: roles
                        .into_iter()
                        .map(|r| RoleName::parse(r).expect("valid"))
                        .collect(),
                    pool,
                    timeout_secs,
                    max_parallel,
                    variables,
                    sensitive_variables: Default::default(),
                    retries: 2,
                    retry_backoff_secs: Some(7),
                    max_attempts: None,
                },
            )
    }

    fn target() -> impl Strategy<Value = Target> {
        (
            name(),
            0usize..7,
            name(),
            proptest::option::of(any::<String>()),
            proptest::option::of(pool()),
            proptest::option::of(probe()),
            proptest::option::of(any::<u64>()),
        )
            .prop_map(
                |(n, k, env, endpoint, default_pool, health_check, health_interval_secs)| Target {
                    name: TargetName::parse(n).expect("valid"),
                    kind: TargetKind::ALL[k],
                    environment: EnvironmentName::parse(env).expect("valid"),
                    roles: vec![RoleName::parse("web").expect("valid")],
                    endpoint,
                    default_pool,
                    health_check,
                    health_interval_secs,
                },
            )
    }

    fn probe() -> impl Strategy<Value = HealthCheck> {
        prop_oneof![
            (any::<String>(), proptest::option::of(any::<u64>())).prop_map(
                |(address, timeout_secs)| HealthCheck::Tcp {
                    address,
                    timeout_secs
                }
            ),
            (any::<String>(), proptest::option::of(any::<u16>())).prop_map(
                |(url, expect_status)| {
                    HealthCheck::Http {
                        url,
                        expect_status,
                        timeout_secs: Some(3),
                    }
                }
            ),
            any::<String>().prop_map(|script| HealthCheck::Script {
                script,
                timeout_secs: None
            }),
            Just(HealthCheck::Off),
        ]
    }

    fn health_state() -> impl Strategy<Value = HealthState> {
        prop_oneof![
            Just(HealthState::Unknown),
            Just(HealthState::Healthy),
            Just(HealthState::HealthyWithWarnings),
            Just(HealthState::Unhealthy),
            Just(HealthState::Unavailable),
        ]
    }

    fn event() -> impl Strategy<Value = Event> {
        prop_oneof![
            (pool(), proptest::option::of(any::<String>())).prop_map(|(pool, description)| {
                Event::PoolRegistered {
                    pool,
                    region: None,
                    description,
                }
            }),
            target().prop_map(|target| Event::TargetRegistered { target }),
            target().prop_map(|target| Event::TargetUpdated { target }),
            target().prop_map(|t| Event::TargetRemoved { target: t.name }),
            pool().prop_map(|pool| Event::PoolRemoved { pool }),
            (
                uuid(),
                any::<String>(),
                proptest::collection::vec(step(), 0..3),
                uuid(),
                pool()
            )
                .prop_map(|(d, project, steps, t, pool)| Event::DeploymentCreated {
                    deployment: DeploymentId(d),
                    spec: DeploymentSpec {
                        project: project.clone(),
                        environment: EnvironmentName::parse("prod").expect("valid"),
                        steps: steps.clone(),
                        unhealthy_targets: UnhealthyTargets::Skip,
                    },
                    steps: steps
                        .iter()
                        .map(|_| PlannedStep {
                            tasks: vec![PlannedTask {
                                task: TaskId(t),
                                target: None,
                                endpoint: None,
                                pool: pool.clone(),
                                rule: PoolRule::GlobalDefault,
                            }],
                            package: None,
                        })
                        .collect(),
                }),
            (uuid(), uuid(), any::<u32>(), pool()).prop_map(|(d, t, attempt, pool)| {
                Event::TaskPlanned {
                    deployment: DeploymentId(d),
                    task: TaskId(t),
                    attempt,
                    pool,
                    rule: PoolRule::Step,
                }
            }),
            (
                uuid(),
                uuid(),
                any::<u32>(),
                worker(),
                any::<u64>(),
                lines()
            )
                .prop_map(|(d, t, attempt, worker, first_line, lines)| {
                    Event::TaskOutput {
                        deployment: DeploymentId(d),
                        task: TaskId(t),
                        attempt,
                        delivery: 2,
                        worker,
                        first_line,
                        lines,
                    }
                }),
            (
                uuid(),
                uuid(),
                worker(),
                outcome(),
                proptest::option::of(any::<i32>()),
                ts()
            )
                .prop_map(|(d, t, worker, outcome, exit_code, at)| {
                    Event::TaskFinished {
                        deployment: DeploymentId(d),
                        task: TaskId(t),
                        attempt: 1,
                        delivery: 1,
                        worker,
                        outcome,
                        exit_code,
                        reason: Some("r".into()),
                        at,
                    }
                }),
            (
                uuid(),
                uuid(),
                any::<u32>(),
                proptest::option::of(any::<u64>())
            )
                .prop_map(|(d, t, attempt, stream_seq)| Event::TaskDispatched {
                    deployment: DeploymentId(d),
                    task: TaskId(t),
                    attempt,
                    stream_seq,
                }),
            (uuid(), uuid(), any::<u32>(), any::<String>()).prop_map(|(d, t, attempt, reason)| {
                Event::TaskCancelled {
                    deployment: DeploymentId(d),
                    task: TaskId(t),
                    attempt,
                    reason,
                }
            }),
            (uuid(), any::<String>()).prop_map(|(d, reason)| Event::DeploymentCancelRequested {
                deployment: DeploymentId(d),
                reason,
            }),
            (uuid(), name(), pool(), probe(), ts()).prop_map(|(c, t, pool, probe, at)| {
                Event::HealthCheckPlanned {
                    check: CheckId(c),
                    target: TargetName::parse(t).expect("valid"),
                    pool,
                    rule: PoolRule::TargetDefault,
                    probe,
                    trigger: crate::events::CheckTrigger::OnDemand,
                    deadline_at: at,
                }
            }),
            (
                uuid(),
                name(),
                worker(),
                pool(),
                health_state(),
                proptest::option::of(any::<String>()),
                any::<u64>()
            )
                .prop_map(|(c, t, worker, pool, state, reason, duration_ms)| {
                    Event::TargetHealthChecked {
                        check: CheckId(c),
                        target: TargetName::parse(t).expect("valid"),
                        task: Some(TaskId(c)),
                        worker,
                        pool,
                        state,
                        reason,
                        duration_ms,
                        at: Timestamp(5),
                    }
                }),
            (uuid(), name(), any::<String>()).prop_map(|(d, t, reason)| Event::TargetSkipped {
                deployment: DeploymentId(d),
                target: TargetName::parse(t).expect("valid"),
                reason,
            }),
            (worker(), pool(), any::<bool>()).prop_map(|(worker, pool, drain)| if drain {
                Event::WorkerDrainRequested { worker, pool }
            } else {
                Event::WorkerResumed { worker, pool }
            }),
            (
                any::<String>(),
                any::<String>(),
                proptest::collection::vec(any::<u8>(), 0..64),
                proptest::option::of(any::<String>()),
            )
                .prop_map(|(subject, reason, head, claimed)| Event::MessageRejected {
                    subject,
                    reason,
                    size: head.len() as u64,
                    head,
                    claimed,
                }),
            (any::<String>(), any::<u64>(), any::<i64>()).prop_map(|(subject, count, t)| {
                Event::RejectionsCounted {
                    subject,
                    count,
                    first_at: Timestamp(t),
                    last_at: Timestamp(t),
                }
            }),
        ]
    }

    proptest! {
        #[test]
        fn the_feeds_json_of_a_record_is_the_apis(e in event()) {
            let env = Envelope {
                seq: 7,
                event_id: EventId::new(),
                time: Timestamp(1_700_000_000_123),
                stream: e.stream(),
                event_type: e.event_type().to_owned(),
                schema_version: 1,
                correlation_id: e.deployment().map(|d| d.0),
                causation_id: None,
                payload: encode(&e).expect("encodes"),
                prev_hash: vec![7; 32],
                actor: None,
            };
            let fast: serde_json::Value =
                serde_json::from_slice(&crate::api::EventView::json_of(&env).expect("json")).expect("parses");
            let view = serde_json::to_value(crate::api::EventView::of(env)).expect("json");
            prop_assert_eq!(fast, view);
        }

        #[test]
        fn events_round_trip(e in event()) {
            let bytes = encode(&e).expect("encodes");
            let back: Event = decode("event", &bytes).expect("decodes");
            prop_assert_eq!(back, e);
        }

        #[test]
        fn envelopes_round_trip(e in event(), seq in any::<u64>(), id in uuid(), t in ts(),
                                corr in proptest::option::of(uuid()), hash in proptest::collection::vec(any::<u8>(), 32)) {
            let env = Envelope {
                seq, event_id: EventId(id), time: t, stream: e.stream(),
                event_type: e.event_type().to_owned(), schema_version: e.schema_version(),
                correlation_id: corr, causation_id: None,
                payload: encode(&e).expect("encodes"), prev_hash: hash, actor: None,
            };
            let bytes = encode(&env).expect("encodes");
            let back: Envelope = decode("envelope", &bytes).expect("decodes");
            prop_assert_eq!(back, env);
        }

        #[test]
        fn task_messages_round_trip(d in uuid(), t in uuid(), attempt in any::<u32>(), p in pool(),
                                    a in action(), s in step(), at in ts()) {
            let m = TaskMessage {
                trace_parent: None,
                schema_version: WIRE_SCHEMA_VERSION, deployment: DeploymentId(d), task: TaskId(t),
                attempt, step_index: 3, step_name: s.name, target: None, endpoint: Some("x".into()),
                pool: p, action: a, variables: s.variables, timeout_secs: s.timeout_secs,
                planned_at: at, max_deliveries: 3, probe: None, planned_at_us: at.millis() * 1000,
                sensitive_variables: BTreeMap::from([("PW".to_owned(), crate::secret::Sealed {
                    to: crate::secret::SealedFor::Pool, key: "XK".into(), from: "XF".into(), data: vec![9; 40],
                })]),
                package: Some(crate::messages::PackageSpec {
                    id: crate::PackageId::parse("web").expect("valid"),
                    version: semver::Version::new(1, 2, at.millis().unsigned_abs() % 7),
                    size: attempt.into(),
                    sha256: crate::package::Sha256::of(d.as_bytes()),
                    manifest_sha256: crate::package::Sha256::of(t.as_bytes()),
                }),
            };
            let back: TaskMessage = decode("task", &encode(&m).expect("encodes")).expect("decodes");
            prop_assert_eq!(back, m);
        }

        #[test]
        fn worker_messages_round_trip(id in uuid(), w in worker(), p in pool(), t in uuid(),
                                      o in outcome(), code in proptest::option::of(any::<i32>()), l in lines()) {
            for body in [
                WorkerBody::Joined { region: None, slots: 4, version: "0.1.0".into() },
                WorkerBody::TaskStarted { deployment: DeploymentId(t), task: TaskId(t), attempt: 2, delivery: 1 },
                WorkerBody::TaskOutput { deployment: DeploymentId(t), task: TaskId(t), attempt: 2, delivery: 3, first_line: 7, lines: l.clone() },
                WorkerBody::TaskFinished { deployment: DeploymentId(t), task: TaskId(t), attempt: 2, delivery: 1, outcome: o, exit_code: code, reason: None },
            ] {
                let m = WorkerMessage { schema_version: 1, event_id: EventId(id), worker: w.clone(), pool: p.clone(), sent_at: Timestamp(5), body, trace_parent: None };
                let back: WorkerMessage = decode("worker message", &encode(&m).expect("encodes")).expect("decodes");
                prop_assert_eq!(back, m);
            }
        }

        #[test]
        fn worker_batches_round_trip(ids in proptest::collection::vec(uuid(), 0..8), w in worker(), p in pool(),
                                     t in uuid(), l in lines()) {
            let reports: Vec<WorkerMessage> = ids.iter().enumerate().map(|(i, id)| WorkerMessage {
                trace_parent: None,
                schema_version: WIRE_SCHEMA_VERSION, event_id: EventId(*id), worker: w.clone(), pool: p.clone(),
                sent_at: Timestamp(5),
                body: if i % 2 == 0 {
                    WorkerBody::TaskStarted { deployment: DeploymentId(t), task: TaskId(t), attempt: 1, delivery: 1 }
                } else {
                    WorkerBody::TaskOutput { deployment: DeploymentId(t), task: TaskId(t), attempt: 1, delivery: 1, first_line: 0, lines: l.clone() }
                },
            }).collect();
            let batch = WorkerBatch { schema_version: WIRE_SCHEMA_VERSION, reports: reports.clone() };
            let bytes = encode(&batch).expect("encodes");
            let back: WorkerBatch = decode("worker report batch", &bytes).expect("decodes");
            prop_assert_eq!(&back, &batch);
            let read = decode_results(Some(KIND_REPORT_BATCH), &bytes).expect("reads");
            prop_assert_eq!(&read, &reports);
            let borrowed: Vec<&WorkerMessage> = reports.iter().collect();
            prop_assert_eq!(encode_batch(&borrowed).expect("encodes"), bytes);
        }

        #[test]
        fn arbitrary_bytes_never_panic_the_decoders(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode::<TaskMessage>("task", &bytes);
            let _ = decode::<WorkerMessage>("worker message", &bytes);
            let _ = decode::<Heartbeat>("heartbeat", &bytes);
            let _ = decode::<Envelope>("envelope", &bytes);
            let _ = decode::<Event>("event", &bytes);
            let _ = decode::<WorkerControl>("worker control", &bytes);
            let _ = decode::<CheckMessage>("check message", &bytes);
            let _ = decode::<WorkerBatch>("worker report batch", &bytes);
            let _ = decode_results(None, &bytes);
            let _ = decode_results(Some(KIND_REPORT_BATCH), &bytes);
        }

        #[test]
        fn truncated_messages_are_rejected(e in event(), w in worker(), p in pool(), t in uuid(), cut in any::<proptest::sample::Index>()) {
            let report = WorkerMessage {
                trace_parent: None,
                schema_version: WIRE_SCHEMA_VERSION, event_id: EventId(t), worker: w, pool: p,
                sent_at: Timestamp(1),
                body: WorkerBody::TaskStarted { deployment: DeploymentId(t), task: TaskId(t), attempt: 1, delivery: 1 },
            };
            let bytes = encode(&report).expect("encodes");
            let at = cut.index(bytes.len());
            prop_assert!(decode::<WorkerMessage>("worker message", &bytes[..at]).is_err());
            let batch = WorkerBatch { schema_version: WIRE_SCHEMA_VERSION, reports: vec![report.clone(), report] };
            let bytes = encode(&batch).expect("encodes");
            let at = cut.index(bytes.len());
            prop_assert!(decode::<WorkerBatch>("worker report batch", &bytes[..at]).is_err());
            prop_assert!(decode_results(Some(KIND_REPORT_BATCH), &bytes[..at]).is_err());
            let bytes = encode(&e).expect("encodes");
            let at = cut.index(bytes.len());
            prop_assert!(decode::<Event>("event", &bytes[..at]).is_err());
        }
    }

    #[test]
    fn a_rejection_recorded_before_claims_were_kept_still_reads() {
        /// `MessageRejected` as logs before issue 13 hold it: no `claimed`.
        #[derive(serde::Serialize)]
        enum Old {
            MessageRejected {
                subject: String,
                reason: String,
                size: u64,
                #[serde(with = "serde_bytes")]
                head: Vec<u8>,
            },
        }
        let bytes = encode(&Old::MessageRejected {
            subject: "shoal.heartbeat.p.w".into(),
            reason: "malformed".into(),
            size: 1,
            head: vec![0xc1],
        })
        .expect("encodes");
        let back: Event = decode("event", &bytes).expect("an old record reads");
        assert_eq!(
            back,
            Event::MessageRejected {
                subject: "shoal.heartbeat.p.w".into(),
                reason: "malformed".into(),
                size: 1,
                head: vec![0xc1],
                claimed: None,
            }
        );
    }

    #[test]
    fn invalid_names_on_the_wire_are_rejected() {
        let mut m: BTreeMap<&str, &str> = BTreeMap::new();
        m.insert("name", "Not Valid");
        let bytes = encode(&m).expect("encodes");
        #[derive(serde::Deserialize, Debug)]
        struct P {
            #[expect(dead_code, reason = "only decoding is under test")]
            name: PoolName,
        }
        let e = decode::<P>("pool", &bytes).expect_err("must reject");
        assert!(
            e.to_string()
                .contains("pool name \"Not Valid\" contains 'N'"),
            "{e}"
        );
    }

    #[test]
    fn results_are_read_by_their_kind() {
        let report = WorkerMessage {
            trace_parent: None,
            schema_version: WIRE_SCHEMA_VERSION,
            event_id: EventId::new(),
            worker: WorkerName::parse("w1").expect("valid"),
            pool: PoolName::parse("default").expect("valid"),
            sent_at: Timestamp(1),
            body: WorkerBody::Left { reason: "r".into() },
        };
        // A single report, as older workers send it.
        let single = encode(&report).expect("encodes");
        let read = decode_results(None, &single).expect("reads");
        assert_eq!(read, vec![report.clone()]);
        // The same bytes said to be a batch, and a batch without the header, are unreadable.
        assert!(decode_results(Some(KIND_REPORT_BATCH), &single).is_err());
        let batch = WorkerBatch {
            schema_version: WIRE_SCHEMA_VERSION,
            reports: vec![report.clone(), report.clone()],
        };
        let bytes = encode(&batch).expect("encodes");
        assert!(decode_results(None, &bytes).is_err());
        // A batch from a newer build, and a kind this build does not know, say what to do.
        let newer = WorkerBatch {
            schema_version: WIRE_SCHEMA_VERSION + 1,
            ..batch
        };
        let e = decode_results(Some(KIND_REPORT_BATCH), &encode(&newer).expect("encodes"))
            .expect_err("must reject");
        assert!(e.to_string().contains("unknown schema version 2"), "{e}");
        assert!(e.to_string().contains("upgrade the planner"), "{e}");
        let e = decode_results(Some("report-zip"), &bytes).expect_err("must reject");
        assert!(
            e.to_string()
                .contains("unknown message kind \"report-zip\""),
            "{e}"
        );
    }

    #[test]
    fn oversized_messages_are_rejected_before_decoding() {
        let big = vec![0u8; MAX_MESSAGE_BYTES + 1];
        assert!(matches!(
            decode::<Event>("event", &big),
            Err(CodecError::TooLarge { .. })
        ));
    }
}
