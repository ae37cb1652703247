//! The document against the router and the guard's table: a route without documentation,
//! documentation without a route, or either without its entry in the table fails here.

use super::*;
use std::collections::BTreeSet;

/// (method, pattern) of every operation of the document.
fn documented() -> BTreeSet<(Method, String)> {
    let mut doc = ApiDoc::openapi();
    doc.paths
        .paths
        .iter_mut()
        .flat_map(|(path, item)| {
            operations_mut(item)
                .into_iter()
                .map(|(method, _)| (method, path.clone()))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// (method, pattern) of every route of the router.
fn routed() -> BTreeSet<(Method, String)> {
    let listed = super::super::routes().listed;
    let set: BTreeSet<_> = listed
        .iter()
        .map(|(m, p)| (m.clone(), (*p).to_owned()))
        .collect();
    assert_eq!(set.len(), listed.len(), "a route is listed twice");
    set
}

fn in_table() -> BTreeSet<(Method, String)> {
    auth::ENDPOINTS
        .iter()
        .map(|e| (e.method.clone(), e.path.to_owned()))
        .collect()
}

fn missing(
    what: &str,
    from: &BTreeSet<(Method, String)>,
    other: &BTreeSet<(Method, String)>,
) -> Vec<String> {
    other
        .difference(from)
        .map(|(m, p)| format!("{m} {p} is not {what}"))
        .collect()
}

#[test]
fn every_route_is_documented_and_every_documented_operation_is_a_route() {
    let (routed, documented) = (routed(), documented());
    assert!(routed.len() >= 40, "{routed:?}");
    let mut wrong = missing("documented", &documented, &routed);
    wrong.extend(missing("a route of the router", &routed, &documented));
    assert!(wrong.is_empty(), "{wrong:#?}");
}

#[test]
fn every_documented_operation_is_in_the_guards_table_and_nothing_else_is() {
    let (table, documented) = (in_table(), documented());
    let mut wrong = missing("in auth::ENDPOINTS", &table, &documented);
    wrong.extend(missing("documented", &documented, &table));
    assert!(wrong.is_empty(), "{wrong:#?}");
}

#[test]
fn only_the_public_endpoints_go_without_a_bearer_token() {
    let doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(
        doc["components"]["securitySchemes"][BEARER]["scheme"],
        "bearer"
    );
    let mut public = Vec::new();
    for (path, item) in doc["paths"].as_object().into_iter().flatten() {
        for (method, op) in item.as_object().into_iter().flatten() {
            let bearer = op["security"][0].get(BEARER).is_some();
            let answers_401 = op["responses"].get("401").is_some();
            assert_eq!(bearer, answers_401, "{method} {path}");
            if !bearer {
                public.push(format!("{method} {path}"));
            }
        }
    }
    assert_eq!(public, ["get /api/openapi.json", "get /healthz"]);
}

#[test]
fn a_body_is_documented_as_the_media_type_the_guard_lets_through() {
    let doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
    for e in auth::ENDPOINTS {
        let op = &doc["paths"][e.path][e.method.as_str().to_ascii_lowercase()];
        let Some(content) = op["requestBody"]["content"].as_object() else {
            continue;
        };
        let types: Vec<&String> = content.keys().collect();
        assert_eq!(types, [e.body], "{} {}", e.method, e.path);
    }
}

#[test]
fn every_error_answer_is_an_error_body() {
    let doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
    let error_body = serde_json::json!({"$ref": "#/components/schemas/ErrorBody"});
    for (path, item) in doc["paths"].as_object().into_iter().flatten() {
        for (method, op) in item.as_object().into_iter().flatten() {
            for (status, answer) in op["responses"].as_object().into_iter().flatten() {
                if status.starts_with('4') || status.starts_with('5') {
                    let schema = &answer["content"][auth::JSON]["schema"];
                    assert_eq!(schema, &error_body, "{method} {path} {status}");
                }
            }
        }
    }
}

#[test]
fn a_timestamp_and_a_name_are_described_as_their_json() {
    let doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
    let schemas = &doc["components"]["schemas"];
    assert_eq!(schemas["Timestamp"]["type"], "string");
    assert_eq!(schemas["Timestamp"]["format"], "date-time");
    assert_eq!(schemas["PoolName"]["type"], "string");
    assert_eq!(schemas["PoolName"]["maxLength"], 63);
    assert_eq!(schemas["DeploymentId"]["format"], "uuid");
    let json = serde_json::to_value(shoal_shared::Timestamp(0)).unwrap_or_default();
    assert_eq!(json, "1970-01-01T00:00:00.000Z");
}
