//! The package feed over HTTP: `PUT /api/packages/{id}/{version}` (deployer; the body is the
//! file, `application/octet-stream`, streamed into chunks, never held whole),
//! `GET /api/packages[/{id}[/{version}]]` (viewer), `DELETE /api/packages/{id}/{version}`
//! (admin).

use super::auth::Caller;
use super::{ApiError, AppState};
use crate::domain::Command;
use crate::domain::package::PackageDoc;
use crate::log::writer::Appended;
use crate::log::{Proj, package_key};
use crate::packages::{FeedError, PushStats, Store};
use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use futures::StreamExt as _;
use shoal_shared::PackageId;
use shoal_shared::api::{ErrorBody, PackageView, PushedPackage};
use shoal_shared::auth::Actor;

/// The id and version of a path, or a 400 naming what is wrong.
fn parse(id: &str, version: &str) -> Result<(PackageId, semver::Version), ApiError> {
    let id = PackageId::parse(id).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let version = semver::Version::parse(version).map_err(|e| {
        ApiError::bad_request(format!(
            "package version {version:?} is not a semantic version (e.g. 1.2.3): {e}"
        ))
    })?;
    Ok((id, version))
}

fn view(doc: &PackageDoc) -> PackageView {
    let m = &doc.manifest;
    PackageView {
        id: m.id.clone(),
        version: m.version.clone(),
        size: m.size,
        sha256: m.sha256,
        chunks: m.chunks.len(),
        pushed_at: doc.pushed_at,
        acquired: doc.acquired.clone(),
    }
}

/// 201 with what was stored once the version is durable in the log; 200 when the same bytes
/// were there already; 409 when the version exists with other bytes.
#[utoipa::path(
    put,
    path = "/api/packages/{id}/{version}",
    tag = "packages",
    operation_id = "push_package",
    params(super::openapi::PackageVersionPath),
    request_body(content = Vec<u8>, content_type = "application/octet-stream",
        description = "The file (.tar.gz, .tar or .zip), streamed."),
    responses(
        (status = 200, description = "The same bytes were in the feed already.",
         body = PushedPackage),
        (status = 201, description = "Stored and recorded.", body = PushedPackage),
        (status = 400, description = "An invalid id or version, or an upload that broke off \
            or stalled.", body = ErrorBody),
        (status = 409, description = "The version is in the feed with other bytes.",
         body = ErrorBody),
        (status = 413, description = "The package is over 4 GiB.", body = ErrorBody),
        (status = 503, description = "As many uploads as may run at once are running, or the \
            broker did not store the chunks.", body = ErrorBody),
    ),
)]
pub(super) async fn push(
    State(app): State<AppState>,
    caller: Caller,
    Path((id, version)): Path<(String, String)>,
    body: Body,
) -> Result<(StatusCode, Json<PushedPackage>), ApiError> {
    let (id, version) = parse(&id, &version)?;
    let _slot = app.uploads.clone().try_acquire_owned().map_err(|_| {
        ApiError::unavailable(format!(
            "{MAX_UPLOADS} package uploads are already in progress; try again when one has ended"
        ))
    })?;
    let upload = tokio_util::io::StreamReader::new(idle_limited(body));
    // On a task of its own, so that a client hanging up cannot end it between storing the
    // chunks and recording the version (and let a sweep in between).
    let pushed = tokio::spawn(push_and_record(
        app.clone(),
        caller.actor(),
        (id.clone(), version.clone()),
        upload,
    ));
    let (appended, stats) = pushed
        .await
        .map_err(|e| ApiError::internal("a package push", &e))??;
    let doc = app
        .read(move |log| Ok(log.doc::<PackageDoc>(Proj::Packages, &package_key(&id, &version))?))
        .await?
        .ok_or_else(|| ApiError::internal("reading a pushed package", &"not in the projection"))?;
    let status = if appended.seqs.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((
        status,
        Json(PushedPackage {
            package: view(&doc),
            new_chunks: stats.new_chunks,
            new_bytes: stats.new_bytes,
        }),
    ))
}

/// Stores the upload's chunks the feed lacks and records the version, holding the feed
/// (no sweep) from before it looks the version up until the version is recorded or the push
/// failed; one that failed with chunks stored asks for a sweep, to take them away again.
async fn push_and_record(
    app: AppState,
    actor: Option<Actor>,
    (id, version): (PackageId, semver::Version),
    upload: impl tokio::io::AsyncRead + Send + Unpin + 'static,
) -> Result<(Appended, PushStats), ApiError> {
    let _pushing = app.feed.pushing().await;
    // A version in the feed is only hashed: the same bytes are a no-op, others a 409, and
    // neither stores a chunk.
    let k = package_key(&id, &version);
    let known: Option<PackageDoc> = app
        .read(move |log| Ok(log.doc(Proj::Packages, &k)?))
        .await?;
    let store = match known {
        Some(d) if d.removed_at.is_none() => Store::Nothing,
        _ => Store::Chunks,
    };
    let recorded = async {
        let (manifest, manifest_sha256, stats) = (app.feed.push(id, version, upload, store))
            .await
            .map_err(push_error)?;
        let command = Command::RecordPackage {
            manifest,
            manifest_sha256,
            keep: app.package_retention,
        };
        Ok((app.writer.execute_as(actor, command).await?, stats))
    }
    .await;
    if recorded.is_err() && store == Store::Chunks {
        app.feed.sweep_soon();
    }
    recorded
}

/// The answer to a push the feed refused: the client's fault (400, 413) or the broker's (503).
fn push_error(e: FeedError) -> ApiError {
    let status = match e {
        FeedError::Upload { .. } => StatusCode::BAD_REQUEST,
        FeedError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    };
    ApiError {
        status,
        message: e.to_string(),
    }
}

/// Uploads at once: each holds a blocking thread (the chunker) while it lasts.
pub const MAX_UPLOADS: usize = 4;
/// How long an upload may send nothing before it is given up.
const UPLOAD_IDLE: std::time::Duration = std::time::Duration::from_secs(60);

/// The request body as a stream that fails when nothing comes for [`UPLOAD_IDLE`].
fn idle_limited(
    body: Body,
) -> impl futures::Stream<Item = Result<bytes::Bytes, std::io::Error>> + Send + Unpin + 'static {
    let data = body.into_data_stream();
    Box::pin(futures::stream::unfold(data, |mut data| async move {
        match tokio::time::timeout(UPLOAD_IDLE, data.next()).await {
            Ok(Some(Ok(b))) => Some((Ok(b), data)),
            Ok(Some(Err(e))) => Some((Err(std::io::Error::other(e)), data)),
            Ok(None) => None,
            Err(_) => Some((
                Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("the upload sent nothing for {} s", UPLOAD_IDLE.as_secs()),
                )),
                data,
            )),
        }
    }))
}

/// Every version in the feed, by id and then version.
#[utoipa::path(
    get,
    path = "/api/packages",
    tag = "packages",
    operation_id = "list_packages",
    responses((status = 200, description = "Every version in the feed.", body = Vec<PackageView>)),
)]
pub(super) async fn list(State(app): State<AppState>) -> Result<Json<Vec<PackageView>>, ApiError> {
    Ok(Json(versions(&app, None).await?))
}

/// The versions of one package, oldest first; 404 if it has none.
#[utoipa::path(
    get,
    path = "/api/packages/{id}",
    tag = "packages",
    operation_id = "show_package",
    params(("id" = PackageId, Path, description = "The package.")),
    responses(
        (status = 200, description = "Its versions, oldest first.", body = Vec<PackageView>),
        (status = 400, description = "An id that is not one.", body = ErrorBody),
        (status = 404, description = "The package has no version in the feed.", body = ErrorBody),
    ),
)]
pub(super) async fn show(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Vec<PackageView>>, ApiError> {
    let id = PackageId::parse(id).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let found = versions(&app, Some(&id)).await?;
    if found.is_empty() {
        return Err(ApiError::not_found(format!(
            "package {id} is not in the feed (`shoal package push FILE --id {id} --version X.Y.Z`)"
        )));
    }
    Ok(Json(found))
}

async fn versions(app: &AppState, id: Option<&PackageId>) -> Result<Vec<PackageView>, ApiError> {
    let docs: Vec<PackageDoc> = app.read(|log| Ok(log.docs(Proj::Packages)?)).await?;
    let mut views: Vec<PackageView> = docs
        .iter()
        .filter(|d| d.removed_at.is_none() && id.is_none_or(|id| &d.manifest.id == id))
        .map(view)
        .collect();
    views.sort_by(|a, b| (&a.id, &a.version).cmp(&(&b.id, &b.version)));
    Ok(views)
}

/// One version.
#[utoipa::path(
    get,
    path = "/api/packages/{id}/{version}",
    tag = "packages",
    operation_id = "show_package_version",
    params(super::openapi::PackageVersionPath),
    responses(
        (status = 200, description = "The version.", body = PackageView),
        (status = 400, description = "An invalid id or version.", body = ErrorBody),
        (status = 404, description = "No such version in the feed.", body = ErrorBody),
    ),
)]
pub(super) async fn version(
    State(app): State<AppState>,
    Path((id, version)): Path<(String, String)>,
) -> Result<Json<PackageView>, ApiError> {
    let (id, version) = parse(&id, &version)?;
    let k = package_key(&id, &version);
    let doc: Option<PackageDoc> = app
        .read(move |log| Ok(log.doc(Proj::Packages, &k)?))
        .await?;
    (doc.filter(|d| d.removed_at.is_none()))
        .map(|d| Json(view(&d)))
        .ok_or_else(|| {
            ApiError::not_found(format!("package {id} has no version {version} in the feed"))
        })
}

/// 204 once the removal is durable.
#[utoipa::path(
    delete,
    path = "/api/packages/{id}/{version}",
    tag = "packages",
    operation_id = "remove_package",
    params(super::openapi::PackageVersionPath),
    responses(
        (status = 204, description = "Removed."),
        (status = 400, description = "An invalid id or version.", body = ErrorBody),
        (status = 404, description = "No such version (the message names the ones there are).",
         body = ErrorBody),
        (status = 409, description = "An unfinished deployment uses it.", body = ErrorBody),
    ),
)]
pub(super) async fn remove(
    State(app): State<AppState>,
    caller: Caller,
    Path((id, version)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let (id, version) = parse(&id, &version)?;
    app.writer
        .execute_as(caller.actor(), Command::RemovePackage { id, version })
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_package_over_the_limit_is_413_a_broken_upload_400_and_the_broker_503() {
        let status = |e: FeedError| push_error(e).status;
        assert_eq!(status(FeedError::TooLarge), StatusCode::PAYLOAD_TOO_LARGE);
        let upload = FeedError::Upload {
            read: 10,
            cause: "reset".into(),
        };
        assert_eq!(status(upload), StatusCode::BAD_REQUEST);
        let store = FeedError::Store {
            chunk: shoal_shared::package::Sha256::of(b"chunk"),
            cause: "timed out".into(),
        };
        assert_eq!(status(store), StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            push_error(FeedError::TooLarge)
                .message
                .contains("larger than")
        );
    }
}
