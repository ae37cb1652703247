//! The OpenAPI schemas of the API's types whose JSON is a string written by hand (names,
//! ids, timestamps, digests, keys, actors, log cursors): their serde goes through text, so a
//! derive would describe the Rust value instead of what is on the wire. Each schema says
//! what the JSON is, with the same limits the type's parse checks, so a generated client or
//! an API tester sends what the planner accepts. Everything else derives its schema where it
//! is declared.

use crate::auth::Actor;
use crate::ids::{CheckId, DeploymentId, EventId, TaskId};
use crate::names::{
    EnvironmentName, MAX_NAME_LEN, PackageId, PoolName, RegionName, RoleName, TargetName,
    TokenName, WorkerName,
};
use crate::package::Sha256;
use crate::secret::{PoolKey, SecretString};
use crate::time::Timestamp;
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, Schema, SchemaFormat, Type};

/// What every name is: a single safe NATS subject token (`names::check_name`).
const NAME_PATTERN: &str = "^[a-z0-9_-]+$";

/// A string schema described as `description`, with `example`.
fn text(description: &str, example: &str) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .description(Some(description))
        .examples([example])
}

/// The schema of a name of `kind` (`pool`, `target`, …).
fn name(kind: &str, example: &str) -> RefOr<Schema> {
    text(
        &format!("A {kind} name: 1 to {MAX_NAME_LEN} of a-z, 0-9, '-' and '_'."),
        example,
    )
    .pattern(Some(NAME_PATTERN))
    .min_length(Some(1))
    .max_length(Some(MAX_NAME_LEN))
    .into()
}

/// The schema of an id: a UUID in its hyphenated form.
fn uuid(description: &str) -> RefOr<Schema> {
    text(description, "0194a1b2-0000-7000-8000-000000000000")
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Uuid)))
        .into()
}

macro_rules! schema_of {
    ($ty:ty, $schema:expr) => {
        impl utoipa::PartialSchema for $ty {
            fn schema() -> RefOr<Schema> {
                $schema
            }
        }

        impl utoipa::ToSchema for $ty {}
    };
}

schema_of!(PoolName, name(PoolName::KIND, "eu-west"));
schema_of!(WorkerName, name(WorkerName::KIND, "eu-west-1"));
schema_of!(TargetName, name(TargetName::KIND, "shop-eu"));
schema_of!(EnvironmentName, name(EnvironmentName::KIND, "production"));
schema_of!(RoleName, name(RoleName::KIND, "web"));
schema_of!(RegionName, name(RegionName::KIND, "eu"));
schema_of!(PackageId, name(PackageId::KIND, "web"));
schema_of!(TokenName, name(TokenName::KIND, "ci"));

schema_of!(
    DeploymentId,
    uuid("A deployment's id (UUID v7: ids sort by creation).")
);
schema_of!(TaskId, uuid("A task's id (UUID v7)."));
schema_of!(
    EventId,
    uuid("An event's id (UUID v7); the log de-duplicates on it.")
);
schema_of!(CheckId, uuid("A health check's id (UUID v7)."));

schema_of!(
    Timestamp,
    text(
        "A time in UTC, RFC 3339 with milliseconds.",
        "2026-11-27T18:43:39.123Z"
    )
    .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime)))
    .into()
);

schema_of!(
    Sha256,
    text(
        "A SHA-256: 64 characters of lowercase hex.",
        "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
    )
    .pattern(Some("^[0-9a-f]{64}$"))
    .into()
);

schema_of!(
    PoolKey,
    text(
        "A pool's public key for sealing sensitive variables: X and 55 base32 letters, as \
         `shoal-planner pool-keygen` writes it.",
        "XCMEF6G27SQJFPYMTSDORECDWSFTUCHZRSTMPJKQVYAYJHKY6S3B46AP"
    )
    .pattern(Some("^X[A-Z2-7]{55}$"))
    .into()
);

schema_of!(
    SecretString,
    text(
        "A sensitive value in clear: sealed by the planner before it is recorded, and shown \
         as ******** in every answer.",
        "s3cret"
    )
    .write_only(Some(true))
    .into()
);

schema_of!(
    Actor,
    text(
        "Who caused an event: token:<name>, worker:<name>, integrator:<name> or planner.",
        "token:ci"
    )
    .pattern(Some(
        "^(planner|(token|worker|integrator):[a-z0-9_-]{1,63})$"
    ))
    .into()
);

schema_of!(
    super::LogCursor,
    text(
        "A position in a task's output, <attempt>.<run>.<line>, as `next` gives it.",
        "1.1.41"
    )
    .pattern(Some("^[0-9]+\\.[0-9]+\\.[0-9]+$"))
    .into()
);

/// A semantic version, as semver.org gives its grammar.
const SEMVER_PATTERN: &str = "^(0|[1-9][0-9]*)\\.(0|[1-9][0-9]*)\\.(0|[1-9][0-9]*)\
    (-(0|[1-9][0-9]*|[0-9]*[a-zA-Z-][0-9a-zA-Z-]*)\
    (\\.(0|[1-9][0-9]*|[0-9]*[a-zA-Z-][0-9a-zA-Z-]*))*)?\
    (\\+[0-9a-zA-Z-]+(\\.[0-9a-zA-Z-]+)*)?$";

/// The schema of a semantic version (`semver::Version`, written as text), for the fields
/// and path parameters that hold one.
pub fn version() -> RefOr<Schema> {
    text("A semantic version (https://semver.org).", "1.2.3")
        .pattern(Some(SEMVER_PATTERN))
        .into()
}
