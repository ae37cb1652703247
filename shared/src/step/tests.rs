//! Parsing deployments: every refusal says which field and why, in the words users know;
//! a valid deployment converts back into exactly the spec it came from.

use super::*;
use crate::domain::TargetKind;
use proptest::prelude::*;

/// A registry with pools `default` and `eu-west`, and targets in `prod`.
struct Known {
    pools: Vec<PoolName>,
    targets: Vec<Target>,
}

fn env(s: &str) -> EnvironmentName {
    EnvironmentName::parse(s).expect("valid")
}

fn role(s: &str) -> RoleName {
    RoleName::parse(s).expect("valid")
}

fn target(name: &str, roles: &[&str], endpoint: Option<&str>) -> Target {
    Target {
        name: TargetName::parse(name).expect("valid"),
        kind: TargetKind::Ssh,
        environment: env("prod"),
        roles: roles.iter().copied().map(role).collect(),
        endpoint: endpoint.map(str::to_owned),
        default_pool: None,
        health_check: None,
        health_interval_secs: None,
    }
}

fn known() -> Known {
    Known {
        pools: ["default", "eu-west"]
            .into_iter()
            .map(|p| PoolName::parse(p).expect("valid"))
            .collect(),
        targets: vec![
            target("web-1", &["web"], Some("https://web-1")),
            target("db-1", &["db"], None),
        ],
    }
}

impl Registry for Known {
    fn has_environment(&self, environment: &EnvironmentName) -> bool {
        self.targets.iter().any(|t| &t.environment == environment)
    }
    fn environments(&self) -> Vec<EnvironmentName> {
        let set: BTreeSet<_> = self.targets.iter().map(|t| t.environment.clone()).collect();
        set.into_iter().collect()
    }
    fn has_pool(&self, pool: &PoolName) -> bool {
        self.pools.contains(pool)
    }
    fn pools(&self) -> Vec<PoolName> {
        self.pools.clone()
    }
    fn targets_in(&self, environment: &EnvironmentName) -> Vec<&Target> {
        self.targets
            .iter()
            .filter(|t| &t.environment == environment)
            .collect()
    }
    /// Package `web` in versions 1.2.3, 1.4.0, 1.10.0 and 2.0.0.
    fn package_versions(&self, id: &PackageId) -> Vec<(semver::Version, Sha256)> {
        if id.as_str() != "web" {
            return vec![];
        }
        ["1.2.3", "1.10.0", "1.4.0", "2.0.0"]
            .into_iter()
            .map(|v| (v.parse().expect("valid"), Sha256::of(v.as_bytes())))
            .collect()
    }
    fn package_ids(&self) -> Vec<PackageId> {
        vec![PackageId::parse("web").expect("valid")]
    }
}

fn deploy_package(id: &str, version: &str) -> StepSpec {
    StepSpec {
        action: Action::DeployPackage {
            package: PackageRef {
                id: PackageId::parse(id).expect("valid"),
                version: version.into(),
            },
            script: "./install.sh".into(),
            shell: None,
        },
        ..step("deploy")
    }
}

fn resolved(version: &str) -> Result<String, String> {
    let spec = DeploymentSpec {
        steps: vec![deploy_package("web", version)],
        ..deployment(vec![])
    };
    ValidDeployment::parse(&spec, &known())
        .map(|d| {
            let p = d.steps()[0].package().expect("a package step");
            p.version.to_string()
        })
        .map_err(|e| e.to_string())
}

#[test]
fn a_package_version_is_exact_or_the_newest_in_its_range() {
    assert_eq!(resolved("1.4.0").as_deref(), Ok("1.4.0"));
    assert_eq!(
        resolved("1.2.3").as_deref(),
        Ok("1.2.3"),
        "exact, not ^1.2.3"
    );
    assert_eq!(
        resolved("^1.2").as_deref(),
        Ok("1.10.0"),
        "semantic, not text order"
    );
    assert_eq!(resolved("~1.4").as_deref(), Ok("1.4.0"));
    assert_eq!(resolved(">=1.0, <3").as_deref(), Ok("2.0.0"));
    assert_eq!(resolved("*").as_deref(), Ok("2.0.0"));
}

#[test]
fn an_unknown_package_or_version_is_refused_naming_what_the_feed_has() {
    let err = resolved("1.3.0").expect_err("no such version");
    assert!(
        err.starts_with("steps[0].action.package.version:")
            && err.contains("1.2.3, 1.4.0, 1.10.0, 2.0.0"),
        "{err}"
    );
    let err = resolved("one").expect_err("not a version");
    assert!(err.contains("neither a version"), "{err}");
    let spec = DeploymentSpec {
        steps: vec![deploy_package("api", "1.0.0")],
        ..deployment(vec![])
    };
    let err = ValidDeployment::parse(&spec, &known())
        .expect_err("unknown")
        .to_string();
    assert_eq!(
        err,
        "steps[0].action.package.id: unknown package \"api\" (in the feed: web)"
    );
}

fn step(name: &str) -> StepSpec {
    StepSpec {
        name: name.into(),
        action: Action::Script {
            script: "true".into(),
            shell: None,
        },
        roles: vec![role("web")],
        pool: None,
        timeout_secs: None,
        max_parallel: None,
        variables: BTreeMap::new(),
        sensitive_variables: Default::default(),
        retries: 0,
        retry_backoff_secs: None,
        max_attempts: None,
    }
}

fn deployment(steps: Vec<StepSpec>) -> DeploymentSpec {
    DeploymentSpec {
        project: "p".into(),
        environment: env("prod"),
        steps,
        unhealthy_targets: UnhealthyTargets::default(),
    }
}

/// The message a deployment with this one step is refused with.
fn refusal(change: impl FnOnce(&mut StepSpec)) -> String {
    let mut s = step("s");
    change(&mut s);
    refused(&deployment(vec![s]))
}

fn refused(spec: &DeploymentSpec) -> String {
    match ValidDeployment::parse(spec, &known()) {
        Ok(d) => panic!("accepted: {d:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn a_valid_deployment_converts_back_into_its_spec() {
    let mut s = step("s");
    s.action = Action::Script {
        script: "echo".into(),
        shell: Some("sh".into()),
    };
    s.timeout_secs = Some(5);
    s.max_parallel = Some(2);
    s.max_attempts = Some(1);
    s.retries = MAX_RETRIES;
    s.variables.insert("_A1".into(), "x".into());
    let spec = deployment(vec![s, step("t")]);
    let valid = ValidDeployment::parse(&spec, &known()).expect("valid");
    assert_eq!(
        valid.steps()[0].action(),
        &StepAction::Script {
            script: "echo".into(),
            shell: Some(Shell::Sh)
        }
    );
    assert_eq!(valid.steps()[0].max_parallel().map(|n| n.get()), Some(2));
    assert_eq!(DeploymentSpec::from(valid), spec);
}

#[test]
fn the_deployment_itself_is_checked_first() {
    let mut spec = deployment(vec![]);
    spec.project = "  ".into();
    assert_eq!(refused(&spec), "project: must not be empty");
    spec.project = "p".into();
    spec.environment = env("qa");
    assert_eq!(
        refused(&spec),
        "environment: unknown environment \"qa\" (known: prod); environments come from registered targets"
    );
    spec.environment = env("prod");
    assert_eq!(
        refused(&spec),
        "steps: a deployment needs at least one step"
    );
}

#[test]
fn a_step_needs_a_name_of_its_own() {
    assert_eq!(
        refusal(|s| s.name = " ".into()),
        "steps[0].name: must not be empty"
    );
    assert_eq!(
        refused(&deployment(vec![step("a"), step("a")])),
        "steps[1].name: duplicate step name \"a\""
    );
}

#[test]
fn a_step_names_only_registered_pools() {
    assert_eq!(
        refusal(|s| s.pool = Some(PoolName::parse("eu-wset").expect("valid"))),
        "steps[0].pool: unknown pool \"eu-wset\" (known: default, eu-west)"
    );
}

#[test]
fn the_pool_is_checked_before_the_shell() {
    let message = refusal(|s| {
        s.pool = Some(PoolName::parse("mars").expect("valid"));
        s.action = Action::Script {
            script: String::new(),
            shell: Some("zsh".into()),
        };
    });
    assert!(message.starts_with("steps[0].pool: "), "{message}");
}

#[test]
fn a_script_runs_with_a_known_shell() {
    assert_eq!(
        refusal(|s| s.action = Action::Script {
            script: String::new(),
            shell: Some("zsh".into())
        }),
        "steps[0].action.shell: unsupported shell \"zsh\" (supported: bash, sh)"
    );
}

#[test]
fn script_and_variables_together_stay_under_the_limit() {
    let half = MAX_STEP_BYTES / 2;
    let message = refusal(|s| {
        s.action = Action::Script {
            script: "#".repeat(half),
            shell: None,
        };
        s.variables.insert("V".into(), "x".repeat(half));
    });
    assert_eq!(
        message,
        format!(
            "steps[0]: script and variables are {} bytes; the limit is 262144 (every task carries them through the broker); ship large files as packages instead",
            2 * half + 1
        )
    );
}

#[test]
fn limits_are_at_least_one_and_retries_bounded() {
    assert_eq!(
        refusal(|s| s.timeout_secs = Some(0)),
        "steps[0].timeout_secs: must be at least 1"
    );
    assert_eq!(
        refusal(|s| s.max_parallel = Some(0)),
        "steps[0].max_parallel: must be at least 1"
    );
    assert_eq!(
        refusal(|s| s.max_attempts = Some(0)),
        "steps[0].max_attempts: must be at least 1"
    );
    assert_eq!(
        refusal(|s| s.retries = MAX_RETRIES + 1),
        "steps[0].retries: 101 is more than the limit of 100"
    );
}

#[test]
fn variables_have_environment_names_and_leave_shoal_ones_alone() {
    assert_eq!(
        refusal(|s| {
            s.variables.insert("1X".into(), "y".into());
        }),
        "steps[0].variables: \"1X\" is not a valid environment variable name (letters, digits and '_', not starting with a digit)"
    );
    assert_eq!(
        refusal(|s| {
            s.variables.insert("SHOAL_TASK".into(), "y".into());
        }),
        "steps[0].variables: \"SHOAL_TASK\" is reserved; SHOAL_* variables are set by the worker"
    );
}

#[test]
fn a_health_check_step_checks_targets_from_their_own_pools() {
    let check = |s: &mut StepSpec| s.action = Action::HealthCheck;
    assert_eq!(
        refusal(|s| {
            check(s);
            s.pool = Some(PoolName::parse("eu-west").expect("valid"));
        }),
        "steps[0].pool: a health_check step checks each target from its own pool (its default pool, else the global default); remove pool"
    );
    assert_eq!(
        refusal(|s| {
            check(s);
            s.roles.clear();
        }),
        "steps[0].roles: a health_check step checks targets; give it roles"
    );
    assert_eq!(
        refusal(|s| {
            check(s);
            s.roles = vec![role("db")];
        }),
        "steps[0]: target \"db-1\" has no health check and no endpoint to probe"
    );
}

#[test]
fn a_step_with_roles_runs_on_some_target() {
    assert_eq!(
        refusal(|s| s.roles = vec![role("cache"), role("queue")]),
        "steps[0].roles: no target in environment \"prod\" has any of the roles [cache, queue] (roles there: db, web)"
    );
    let mut none = step("s");
    none.roles.clear();
    assert!(ValidDeployment::parse(&deployment(vec![none]), &known()).is_ok());
}

#[test]
fn an_earlier_step_is_refused_before_a_later_one() {
    let mut first = step("a");
    first.roles = vec![role("cache")];
    let mut second = step("b");
    second.timeout_secs = Some(0);
    let message = refused(&deployment(vec![first, second]));
    assert!(message.starts_with("steps[0].roles: "), "{message}");
}

fn any_step() -> impl Strategy<Value = StepSpec> {
    (
        "[a-z]{1,8}",
        proptest::option::of(prop_oneof![Just("bash"), Just("sh")]),
        any::<bool>(),
        proptest::option::of(1u64..),
        proptest::option::of(1u32..),
        proptest::collection::btree_map("[A-Z][A-Z0-9_]{0,6}", ".{0,8}", 0..3),
        0..=MAX_RETRIES,
        proptest::option::of(any::<u64>()),
        proptest::option::of(1u32..),
    )
        .prop_map(
            |(name, shell, noop, timeout, parallel, vars, retries, backoff, attempts)| StepSpec {
                name,
                action: if noop {
                    Action::Noop
                } else {
                    Action::Script {
                        script: "echo hi".into(),
                        shell: shell.map(str::to_owned),
                    }
                },
                roles: vec![role("web")],
                pool: None,
                timeout_secs: timeout,
                max_parallel: parallel,
                variables: vars
                    .into_iter()
                    .filter(|(k, _)| !k.starts_with("SHOAL_"))
                    .collect(),
                sensitive_variables: Default::default(),
                retries,
                retry_backoff_secs: backoff,
                max_attempts: attempts,
            },
        )
}

proptest! {
    /// What the log stores is the spec as submitted: parsing it changes not one byte.
    #[test]
    fn parsing_keeps_every_byte_of_a_valid_spec(step in any_step()) {
        let spec = deployment(vec![step]);
        let valid = ValidDeployment::parse(&spec, &known()).expect("valid");
        let back = DeploymentSpec::from(valid);
        prop_assert_eq!(
            rmp_serde::to_vec_named(&back).expect("encodes"),
            rmp_serde::to_vec_named(&spec).expect("encodes")
        );
        prop_assert_eq!(back, spec);
    }
}

fn sealed() -> crate::secret::Sealed {
    crate::secret::Sealed {
        to: crate::secret::SealedFor::Planner,
        key: "k1".into(),
        from: String::new(),
        data: vec![7; 32],
    }
}

#[test]
fn sensitive_variables_are_named_like_variables_and_only_once() {
    assert_eq!(
        refusal(|s| {
            s.sensitive_variables.insert("1PW".into(), sealed());
        }),
        "steps[0].sensitive_variables: \"1PW\" is not a valid environment variable name (letters, digits and '_', not starting with a digit)"
    );
    assert_eq!(
        refusal(|s| {
            s.sensitive_variables.insert("SHOAL_PW".into(), sealed());
        }),
        "steps[0].sensitive_variables: \"SHOAL_PW\" is reserved; SHOAL_* variables are set by the worker"
    );
    assert_eq!(
        refusal(|s| {
            s.variables.insert("PW".into(), "plain".into());
            s.sensitive_variables.insert("PW".into(), sealed());
        }),
        "steps[0].sensitive_variables: \"PW\" is both in variables and in sensitive_variables; give it once"
    );
}

#[test]
fn a_step_with_sensitive_variables_converts_back_with_them_still_sealed() {
    let mut s = step("s");
    s.sensitive_variables.insert("PW".into(), sealed());
    let spec = deployment(vec![s]);
    let valid = ValidDeployment::parse(&spec, &known()).expect("valid");
    assert_eq!(valid.steps()[0].sensitive_variables().len(), 1);
    assert_eq!(DeploymentSpec::from(valid), spec);
}
