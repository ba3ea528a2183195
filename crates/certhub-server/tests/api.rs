//! The service API in process (`router(state).oneshot(request)`), on a real SQLite store:
//! status codes, Azure-shaped errors, ETags, rights, and that refused requests write nothing.

mod common;

use axum::http::StatusCode;
use certhub_core::sign_token;
use common::{hub, message, now};

#[tokio::test]
async fn create_read_update_delete_with_etags() {
    let h = hub().await;
    let (s, d) = h
        .owner("PUT", "/devices/d1?api-version=2021-04-12", Some("{}"))
        .await;
    assert_eq!(s, StatusCode::OK, "{d}");
    assert_eq!(d["authentication"]["type"], "sas");
    let etag = d["etag"].as_str().expect("etag").to_string();

    let (s, e) = h.owner("PUT", "/devices/d1", Some("{}")).await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert!(
        message(&e).starts_with("ErrorCode:DeviceAlreadyExists;"),
        "{e}"
    );

    let t = h.token("iothubowner");
    let body = r#"{"deviceId":"d1","status":"disabled","statusReason":"lost"}"#;
    let (s, _) = h
        .call(
            "PUT",
            "/devices/d1",
            Some(&t),
            Some("\"stale\""),
            Some(body),
        )
        .await;
    assert_eq!(s, StatusCode::PRECONDITION_FAILED);
    let quoted = format!("\"{etag}\"");
    let (s, d) = h
        .call("PUT", "/devices/d1", Some(&t), Some(&quoted), Some(body))
        .await;
    assert_eq!(s, StatusCode::OK, "{d}");
    assert_eq!(d["status"], "disabled");
    assert_ne!(d["etag"].as_str(), Some(etag.as_str()));
    let (s, _) = h
        .call("PUT", "/devices/nope", Some(&t), Some("\"*\""), Some("{}"))
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    let (s, _) = h
        .call("DELETE", "/devices/d1", Some(&t), Some(&quoted), None)
        .await;
    assert_eq!(
        s,
        StatusCode::PRECONDITION_FAILED,
        "the old ETag no longer matches"
    );
    let (s, _) = h
        .call("DELETE", "/devices/d1", Some(&t), Some("\"*\""), None)
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, e) = h.owner("GET", "/devices/d1", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert!(message(&e).starts_with("ErrorCode:DeviceNotFound;"), "{e}");
}

#[tokio::test]
async fn bad_bodies_and_ids_are_400_and_write_nothing() {
    let h = hub().await;
    let cases = [
        ("/devices/d1", "{not json", "invalid JSON"),
        (
            "/devices/d1",
            r#"{"colour":"red"}"#,
            "unknown field `colour`",
        ),
        ("/devices/d1", r#"{"status":42}"#, "at status"),
        ("/devices/d1", r#"{"status":"sleeping"}"#, "unknown variant"),
        ("/devices/d1", r#"{"deviceId":"d2"}"#, "differs"),
        ("/devices/d1", "", "needs a JSON body"),
        (
            "/devices/d1",
            r#"{"authentication":{"type":"selfSigned","x509Thumbprint":{"primaryThumbprint":"XYZ"}}}"#,
            "not 40 (SHA-1) or 64 (SHA-256) hex",
        ),
        (
            "/devices/d1",
            r#"{"authentication":{"type":"sas","symmetricKey":{"primaryKey":"c2hvcnQ="}}}"#,
            "16 to 64 bytes",
        ),
        ("/devices/bad%2Fid", "{}", "contains '/'"),
        // serde reads a struct from an array of its fields; a body must be an object.
        ("/devices/d1", "[null, null]", "must be a JSON object"),
        ("/devices/d1/modules/m1", "[]", "must be a JSON object"),
    ];
    for (path, body, needle) in cases {
        let (s, e) = h.owner("PUT", path, Some(body)).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}: {e}");
        assert!(message(&e).contains(needle), "{body}: {e}");
    }
    let huge = format!(r#"{{"statusReason":"{}"}}"#, "x".repeat(300_000));
    let (s, _) = h.owner("PUT", "/devices/d1", Some(&huge)).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(h.count().await, 0, "nothing was written");
}

#[tokio::test]
async fn tokens_are_checked_and_rights_enforced() {
    let h = hub().await;
    let owner = h
        .policies
        .iter()
        .find(|p| p.name == "iothubowner")
        .expect("owner");
    let expired = sign_token(
        "localhost",
        &owner.primary_key,
        Some("iothubowner"),
        now() - 10,
    );
    let wrong_key = sign_token(
        "localhost",
        &certhub_core::generate_key(),
        Some("iothubowner"),
        now() + 600,
    );
    let wrong_host = sign_token(
        "other.example.com",
        &owner.primary_key,
        Some("iothubowner"),
        now() + 600,
    );
    let no_skn = sign_token("localhost", &owner.primary_key, None, now() + 600);
    let unknown = sign_token("localhost", &owner.primary_key, Some("nobody"), now() + 600);
    let cases = [
        (None, "no Authorization header"),
        (Some("Bearer abc".to_string()), "SharedAccessSignature"),
        (Some(expired), "expired"),
        (Some(wrong_key), "signature does not match"),
        (Some(wrong_host), "not for this hub"),
        (Some(no_skn), "device-scoped token"),
        (Some(unknown), "unknown shared access policy"),
    ];
    for (auth, needle) in cases {
        let (s, e) = h
            .call("PUT", "/devices/d1", auth.as_deref(), None, Some("{}"))
            .await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{needle}: {e}");
        assert!(message(&e).contains(needle), "{needle}: {e}");
    }
    // registryRead may read but not write; service may not touch the registry at all.
    let read = h.token("registryRead");
    let (s, e) = h
        .call("PUT", "/devices/d1", Some(&read), None, Some("{}"))
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert!(message(&e).contains("lacks RegistryWrite"), "{e}");
    let (s, _) = h.call("GET", "/devices", Some(&read), None, None).await;
    assert_eq!(s, StatusCode::OK);
    let service = h.token("service");
    let (s, e) = h.call("GET", "/devices", Some(&service), None, None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    // Only what the caller lacks is named (service has ServiceConnect).
    assert!(message(&e).contains("lacks RegistryRead,"), "{e}");
    assert_eq!(h.count().await, 0);
}

/// A token's `sr` scopes it as Azure does: `host/devices/xyz` reaches that device's resources
/// and nothing else, even when an owner policy signed it; a port other than the API's is
/// refused.
#[tokio::test]
async fn a_token_reaches_only_what_its_resource_covers() {
    let h = hub().await;
    h.state.set_public_port(8443);
    let owner = h.token("iothubowner");
    for id in ["xyz", "abc"] {
        let (s, e) = h
            .call(
                "PUT",
                &format!("/devices/{id}"),
                Some(&owner),
                None,
                Some("{}"),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{e}");
    }
    let key = &h
        .policies
        .iter()
        .find(|p| p.name == "iothubowner")
        .expect("owner")
        .primary_key;
    let scoped = sign_token(
        "localhost/devices/xyz",
        key,
        Some("iothubowner"),
        now() + 600,
    );
    for path in ["/devices/xyz", "/twins/xyz"] {
        let (s, e) = h.call("GET", path, Some(&scoped), None, None).await;
        assert_eq!(s, StatusCode::OK, "{path}: {e}");
    }
    for (method, path) in [
        ("GET", "/devices/abc"),
        ("GET", "/twins/abc"),
        ("GET", "/devices"),
        ("GET", "/certificates"),
        ("DELETE", "/devices/abc"),
    ] {
        let (s, e) = h.call(method, path, Some(&scoped), Some("*"), None).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{method} {path}: {e}");
        assert!(message(&e).contains("does not cover"), "{e}");
    }
    let other_port = sign_token("localhost:9999", key, Some("iothubowner"), now() + 600);
    let (s, e) = h
        .call("GET", "/devices", Some(&other_port), None, None)
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{e}");
    assert!(message(&e).contains("port 8443"), "{e}");
    let right_port = sign_token("localhost:8443", key, Some("iothubowner"), now() + 600);
    let (s, e) = h
        .call("GET", "/devices", Some(&right_port), None, None)
        .await;
    assert_eq!(s, StatusCode::OK, "{e}");
    assert_eq!(h.count().await, 2, "nothing was deleted");
}

#[tokio::test]
async fn settings_and_audit() {
    let h = hub().await;
    let (s, v) = h.owner("GET", "/settings", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["disableDeviceSAS"], false);
    let rw = h.token("registryReadWrite");
    let (s, _) = h
        .call(
            "PATCH",
            "/settings",
            Some(&rw),
            None,
            Some(r#"{"disableDeviceSAS":true}"#),
        )
        .await;
    assert_eq!(
        s,
        StatusCode::UNAUTHORIZED,
        "settings need an owner-class policy"
    );
    let (s, v) = h
        .owner("PATCH", "/settings", Some(r#"{"disableDeviceSAS":true}"#))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["disableDeviceSAS"], true);
    let (s, _) = h
        .owner("PATCH", "/settings", Some(r#"{"minTlsVersion":"1.0"}"#))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    // An array is not a patch (serde would read it as the struct's fields in order).
    let (s, e) = h.owner("PATCH", "/settings", Some("[true, null]")).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{e}");
    assert!(message(&e).contains("must be a JSON object"), "{e}");
    let (_, v) = h.owner("GET", "/settings", None).await;
    assert_eq!(
        v["disableDeviceSAS"], true,
        "the refused patch changed nothing"
    );
    h.owner("PUT", "/devices/d1", Some("{}")).await;
    let (s, log) = h.owner("GET", "/audit", None).await;
    assert_eq!(s, StatusCode::OK);
    let ops: Vec<(&str, &str)> = log
        .as_array()
        .expect("array")
        .iter()
        .map(|r| {
            (
                r["operation"].as_str().unwrap_or(""),
                r["outcome"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        ops,
        [
            ("device.create", "ok"),
            ("settings.update", "ArgumentInvalid"),
            ("settings.update", "ok")
        ]
    );
    assert_eq!(log[0]["actor"], "iothubowner");
    // disableLocalAuth shuts the door on policy tokens, this one included.
    let (s, _) = h
        .owner("PATCH", "/settings", Some(r#"{"disableLocalAuth":true}"#))
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, e) = h.owner("GET", "/devices", None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert!(message(&e).contains("disableLocalAuth"), "{e}");
}

#[tokio::test]
async fn modules_live_under_their_device() {
    let h = hub().await;
    let (s, _) = h.owner("PUT", "/devices/d1/modules/m1", Some("{}")).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "no device yet");
    h.owner(
        "PUT",
        "/devices/d1",
        Some(r#"{"authentication":{"type":"certificateAuthority"}}"#),
    )
    .await;
    let (s, m) = h
        .owner(
            "PUT",
            "/devices/d1/modules/m1",
            Some(r#"{"moduleId":"m1","deviceId":"d1","managedBy":"ops"}"#),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{m}");
    assert_eq!(m["managedBy"], "ops");
    let (s, list) = h.owner("GET", "/devices/d1/modules", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(list.as_array().map(Vec::len), Some(1));
    let (s, _) = h.owner("DELETE", "/devices/d1", None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = h.owner("GET", "/devices/d1/modules/m1", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn bulk_create_and_delete() {
    let h = hub().await;
    h.owner("PUT", "/devices/taken", Some("{}")).await;
    let body = serde_json::json!([
        {"id": "b1", "importMode": "create"},
        {"id": "b2", "authentication": {"type": "certificateAuthority"}},
        {"id": "taken"},
        {"id": "bad/id"},
        {"id": "b1"},
        {"id": "b3", "importMode": "updateTwin"},
    ])
    .to_string();
    let (s, v) = h.owner("POST", "/devices", Some(&body)).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["isSuccessful"], false);
    let errors: Vec<(String, String)> = v["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .map(|e| {
            (
                e["deviceId"].as_str().unwrap_or("").to_string(),
                e["errorCode"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert_eq!(errors.len(), 4, "{v}");
    assert!(errors.contains(&("taken".into(), "DeviceAlreadyExists".into())));
    assert_eq!(h.count().await, 3, "taken + b1 + b2");
    let (s, d) = h.owner("GET", "/devices/b2", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(d["authentication"]["type"], "certificateAuthority");

    let (s, v) = h
        .owner(
            "POST",
            "/devices",
            Some(r#"[{"id":"b1","importMode":"delete"}]"#),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["isSuccessful"], true);
    assert_eq!(h.count().await, 2);

    let many: Vec<_> = (0..101)
        .map(|i| serde_json::json!({"id": format!("m{i}")}))
        .collect();
    let (s, v) = h
        .owner(
            "POST",
            "/devices",
            Some(&serde_json::Value::from(many).to_string()),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(message(&v).contains("at most 100"), "{v}");
    assert_eq!(h.count().await, 2, "an oversize request writes nothing");
}

/// The OpenAPI document describes every route the router serves, and nothing it does not:
/// each documented (method, path) answers something other than 404/405 for a real call.
#[tokio::test]
async fn openapi_matches_the_routes() {
    let h = hub().await;
    let (s, doc) = h.call("GET", "/openapi.json", None, None, None).await;
    assert_eq!(s, StatusCode::OK);
    let paths = doc["paths"].as_object().expect("paths");
    assert!(paths.len() >= 12);
    for (path, item) in paths {
        for method in ["get", "put", "post", "patch", "delete"] {
            if item.get(method).is_none() {
                continue;
            }
            let concrete = path
                .replace("{id}", "d1")
                .replace("{mid}", "m1")
                .replace("{name}", "n1")
                .replace("{lockToken}", "t1");
            if path.ends_with("/stream") {
                // An endless body: the status and content type are the answer.
                let (s, ct) = h.head_only(&concrete).await;
                assert_eq!(s, StatusCode::OK, "{path}");
                assert_eq!(ct, "text/event-stream", "{path}");
                continue;
            }
            let (s, v) = h.owner(&method.to_uppercase(), &concrete, Some("{}")).await;
            assert!(
                s != StatusCode::METHOD_NOT_ALLOWED
                    && !(s == StatusCode::NOT_FOUND
                        && message(&v).starts_with("ErrorCode:NotFound;")),
                "{method} {path} is documented but not served ({s}: {v})"
            );
        }
    }
}

/// The reverse of `openapi_matches_the_routes`: nothing is served that the document does not
/// describe. `api()` registers routes only through `routes!`, which adds each handler with its
/// description, so (1) its source must add none another way, and (2) on every documented path,
/// each method the document does not give is answered 405, not served.
#[tokio::test]
async fn every_route_is_documented() {
    let source = include_str!("../src/api/mod.rs");
    let routing = source
        .split("fn api()")
        .nth(1)
        .and_then(|rest| rest.split("async fn read_your_bookkeeping").next())
        .expect("api() and router() in mod.rs");
    assert!(
        routing.matches(".routes(routes!(").count() >= 25,
        "routes registered with routes! in api(): {routing}"
    );
    for bypass in [
        ".route(",
        ".route_service(",
        ".nest(",
        ".nest_service(",
        ".merge(",
        "axum::routing::",
    ] {
        assert!(
            !routing.contains(bypass),
            "api()/router() add a route with {bypass}, which bypasses the description: register it with routes! and #[utoipa::path]"
        );
    }

    let h = hub().await;
    let (s, doc) = h.call("GET", "/openapi.json", None, None, None).await;
    assert_eq!(s, StatusCode::OK);
    let paths = doc["paths"].as_object().expect("paths");
    let mut checked = 0;
    for (path, item) in paths {
        let concrete = path
            .replace("{id}", "d1")
            .replace("{mid}", "m1")
            .replace("{name}", "n1")
            .replace("{lockToken}", "t1");
        for method in ["get", "put", "post", "patch", "delete"] {
            if item.get(method).is_some() {
                continue;
            }
            let (s, v) = h.owner(&method.to_uppercase(), &concrete, Some("{}")).await;
            assert_eq!(
                s,
                StatusCode::METHOD_NOT_ALLOWED,
                "{method} {path} is served ({s}: {v}) but not in openapi.json"
            );
            checked += 1;
        }
    }
    assert!(checked >= 60, "undocumented methods tried: {checked}");
}

/// A nested object given as an array is refused (serde alone reads a struct from an array):
/// schemathesis found `"x509Thumbprint": []` accepted in a bulk entry.
#[tokio::test]
async fn nested_objects_given_as_arrays_are_refused() {
    let h = hub().await;
    for (method, path, body) in [
        (
            "POST",
            "/devices",
            r#"[{"id": "a1", "authentication": {"x509Thumbprint": []}}]"#,
        ),
        ("PUT", "/devices/a2", r#"{"authentication": []}"#),
        ("PUT", "/devices/a3", r#"{"capabilities": [false]}"#),
        (
            "PUT",
            "/certificates/c1",
            r#"{"properties": ["pem", false]}"#,
        ),
    ] {
        let (s, v) = h.owner(method, path, Some(body)).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{method} {path} {body}: {v}");
        assert!(
            message(&v).contains("expected a map"),
            "{method} {path}: {v}"
        );
    }
    assert_eq!(h.count().await, 0, "nothing was created");
}

/// What the generated document must keep saying about the hub (the hand-written one's
/// corrections): nullable fields, refusals, id patterns, limits, the upload's own schema.
#[tokio::test]
async fn openapi_describes_the_hub() {
    let h = hub().await;
    let (s, doc) = h.call("GET", "/openapi.json", None, None, None).await;
    assert_eq!(s, StatusCode::OK);
    assert!(
        doc["openapi"].as_str().unwrap_or("").starts_with("3.1"),
        "{}",
        doc["openapi"]
    );
    assert_eq!(doc["info"]["title"], "certhub service API");
    assert_eq!(
        doc["components"]["securitySchemes"]["sas"]["name"],
        "Authorization"
    );
    let schemas = &doc["components"]["schemas"];
    let nullable = |schema: &str, field: &str| {
        let f = &schemas[schema]["properties"][field];
        let types = f["type"].as_array().cloned().unwrap_or_default();
        types.contains(&serde_json::json!("null"))
            || f["oneOf"]
                .as_array()
                .is_some_and(|alts| alts.iter().any(|a| a["type"] == "null"))
    };
    for (schema, field) in [
        ("Device", "statusReason"),
        ("Device", "deviceScope"),
        ("Module", "managedBy"),
        ("SymmetricKey", "primaryKey"),
        ("SymmetricKey", "secondaryKey"),
        ("X509Thumbprint", "primaryThumbprint"),
        ("X509Thumbprint", "secondaryThumbprint"),
    ] {
        assert!(nullable(schema, field), "{schema}.{field} is not nullable");
    }
    let op = |path: &str, method: &str| doc["paths"][path][method].clone();
    for (path, method, codes) in [
        (
            "/devices/{id}",
            "put",
            &["400", "401", "404", "409", "412", "413"][..],
        ),
        ("/devices/{id}", "delete", &["404", "412"][..]),
        ("/certificates/{name}", "put", &["409", "413"][..]),
        (
            "/devices/{id}/messages/deviceBound",
            "post",
            &["403", "404", "413"][..],
        ),
        ("/twins/{id}/methods", "post", &["404", "504"][..]),
    ] {
        for code in codes {
            let r = &op(path, method)["responses"][*code];
            assert_eq!(
                r["$ref"], "#/components/responses/ErrorResponse",
                "{method} {path} {code}: {r}"
            );
        }
    }
    let param = |path: &str, method: &str, name: &str| {
        op(path, method)["parameters"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["name"] == name).cloned())
            .unwrap_or_default()
    };
    let id = param("/devices/{id}", "get", "id");
    assert_eq!(
        id["schema"]["pattern"],
        "^[A-Za-z0-9\\-.+%_#*?!(),=@$':]{1,128}$"
    );
    assert_eq!(
        param("/certificates/{name}", "get", "name")["schema"]["pattern"],
        "^[A-Za-z0-9-._]{1,64}$"
    );
    for (path, max) in [
        ("/devices", 1000),
        ("/audit", 10_000),
        ("/messages/events", 1000),
    ] {
        let top = param(path, "get", "top");
        assert_eq!(top["schema"]["minimum"], 1, "{path}: {top}");
        assert_eq!(top["schema"]["maximum"], max, "{path}: {top}");
    }
    let upload = &op("/certificates/{name}", "put")["requestBody"]["content"]["application/json"]["schema"]
        ["$ref"];
    assert_eq!(upload, "#/components/schemas/CertificateUpload");
    // Operation ids name the operations for generated clients: one each.
    let mut ids = std::collections::BTreeSet::new();
    for item in doc["paths"].as_object().expect("paths").values() {
        for o in item.as_object().expect("path item").values() {
            if let Some(id) = o["operationId"].as_str() {
                assert!(ids.insert(id.to_string()), "operationId {id} is used twice");
            }
        }
    }
    assert!(ids.len() >= 37, "{ids:?}");
    let error = &schemas["Error"];
    assert_eq!(
        error["required"],
        serde_json::json!(["Message", "ExceptionMessage"])
    );
}

/// Every refusal is in Azure's error shape, parameter parsing and unknown methods included,
/// and names what is wrong.
#[tokio::test]
async fn parameter_and_method_errors_are_in_azures_shape() {
    let h = hub().await;
    let owner = h.token("iothubowner");
    let (s, _) = h
        .call("PUT", "/devices/d1", Some(&owner), None, Some("{}"))
        .await;
    assert_eq!(s, StatusCode::OK);
    for (path, needle) in [
        ("/devices?top=abc", "top"),
        ("/audit?top=-1", "top"),
        ("/messages/events?from=x", "from"),
        ("/devices/%FF", "UTF-8"),
    ] {
        let (s, e) = h.call("GET", path, Some(&owner), None, None).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{path}: {e}");
        let m = message(&e);
        assert!(m.starts_with("ErrorCode:ArgumentInvalid;"), "{path}: {e}");
        assert!(m.contains(needle), "{path}: {e}");
    }
    let (s, e) = h
        .call("POST", "/certificates", Some(&owner), None, None)
        .await;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED, "{e}");
    assert!(
        message(&e).starts_with("ErrorCode:MethodNotAllowed;"),
        "{e}"
    );
}

/// A method name that cannot go into an MQTT topic, and a reserved desired key, are 400s.
#[tokio::test]
async fn unusable_method_names_and_reserved_desired_keys_are_refused() {
    let h = hub().await;
    let owner = h.token("iothubowner");
    h.call("PUT", "/devices/d1", Some(&owner), None, Some("{}"))
        .await;
    for name in ["re\\u0000boot", "re\\nboot", "re\\u007fboot"] {
        let body = format!(r#"{{"methodName": "{name}", "payload": null}}"#);
        let (s, e) = h
            .call("POST", "/twins/d1/methods", Some(&owner), None, Some(&body))
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{name}: {e}");
        assert!(message(&e).contains("control characters"), "{e}");
    }
    let (s, e) = h
        .call(
            "PATCH",
            "/twins/d1",
            Some(&owner),
            Some("*"),
            Some(r#"{"properties": {"desired": {"$secret": 1}}}"#),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{e}");
    assert!(message(&e).contains("$secret"), "{e}");
    let (_, twin) = h.call("GET", "/twins/d1", Some(&owner), None, None).await;
    assert_eq!(twin["properties"]["desired"]["$version"], 1, "{twin}");
}

/// An If-Match list matches when any of its tags is the current one (RFC 9110 13.1.1).
#[tokio::test]
async fn an_if_match_list_matches_if_any_entry_does() {
    let h = hub().await;
    let owner = h.token("iothubowner");
    let (_, d) = h
        .call("PUT", "/devices/d1", Some(&owner), None, Some("{}"))
        .await;
    let etag = d["etag"].as_str().expect("etag").to_string();
    let (_, twin) = h.call("GET", "/twins/d1", Some(&owner), None, None).await;
    let twin_etag = twin["etag"].as_str().expect("etag").to_string();
    let wrong = "\"bm9wZQ==\", \"eHl6\"";
    let (s, e) = h
        .call(
            "PATCH",
            "/twins/d1",
            Some(&owner),
            Some(wrong),
            Some(r#"{"tags": {"a": 1}}"#),
        )
        .await;
    assert_eq!(s, StatusCode::PRECONDITION_FAILED, "{e}");
    let list = format!("\"AAAAAAAAAAA=\", \"{twin_etag}\"");
    let (s, e) = h
        .call(
            "PATCH",
            "/twins/d1",
            Some(&owner),
            Some(&list),
            Some(r#"{"tags": {"a": 1}}"#),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{e}");
    let (s, e) = h
        .call("DELETE", "/devices/d1", Some(&owner), Some(wrong), None)
        .await;
    assert_eq!(s, StatusCode::PRECONDITION_FAILED, "{e}");
    let list = format!("\"AAAAAAAAAAA=\", \"{etag}\"");
    let (s, e) = h
        .call("DELETE", "/devices/d1", Some(&owner), Some(&list), None)
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{e}");
}
