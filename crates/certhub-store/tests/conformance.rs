//! One suite, every backend: SQLite always, PostgreSQL when it is reachable at
//! `CERTHUB_TEST_POSTGRES` (default `postgres://postgres@127.0.0.1:5432/test`), as on the CI
//! machine. Each PostgreSQL run gets a database of its own, dropped afterwards.

use certhub_core::{AuthType, DeviceId, DeviceInput, Etag, ModuleId, ModuleInput, Status};
use certhub_store::{
    AuditRecord, DeleteOutcome, EnrollmentKind, EnrollmentRecord, LinkedHubRecord,
    RegistrationRecord, Store, WriteOutcome,
};

fn id(s: &str) -> DeviceId {
    DeviceId::new(s).expect("id")
}

fn device(name: &str, json: serde_json::Value) -> certhub_core::Device {
    serde_json::from_value::<DeviceInput>(json)
        .expect("input")
        .into_device(&id(name), None, 1_000)
        .expect("device")
}

async fn suite(store: &Store) {
    // Create, read, conflict.
    let d1 = device("d1", serde_json::json!({}));
    assert_eq!(
        store.create_device(&d1).await.expect("create"),
        WriteOutcome::Written
    );
    assert_eq!(
        store.create_device(&d1).await.expect("again"),
        WriteOutcome::Exists
    );
    let read = store.device(&id("d1")).await.expect("get").expect("exists");
    assert_eq!(read, d1);
    assert!(store.device(&id("nope")).await.expect("get").is_none());

    // Replace guarded by the ETag.
    let mut d1b = serde_json::from_value::<DeviceInput>(serde_json::json!({"status": "disabled"}))
        .expect("input")
        .into_device(&id("d1"), Some(&read), 2_000)
        .expect("update");
    assert_eq!(d1b.generation_id, read.generation_id);
    assert_ne!(d1b.etag, read.etag);
    assert_eq!(
        store
            .replace_device(&d1b, &Etag("stale".into()))
            .await
            .expect("stale"),
        WriteOutcome::Stale
    );
    assert_eq!(
        store
            .replace_device(&d1b, &read.etag)
            .await
            .expect("replace"),
        WriteOutcome::Written
    );
    let now = store.device(&id("d1")).await.expect("get").expect("exists");
    assert_eq!(now.status, Status::Disabled);
    assert_eq!(now.status_updated_ms, 2_000);
    d1b.status = Status::Disabled;
    assert_eq!(now, d1b);

    // All three kinds of authentication survive a round trip.
    let tp = "A9993E364706816ABA3E25717850C26C9CD0D89D";
    let d2 = device(
        "d2",
        serde_json::json!({"authentication": {"type": "selfSigned",
            "x509Thumbprint": {"primaryThumbprint": tp}}}),
    );
    let d3 = device(
        "d3",
        serde_json::json!({"authentication": {"type": "certificateAuthority"}}),
    );
    assert_eq!(
        store
            .insert_devices(&[d2.clone(), d3.clone(), d1.clone()])
            .await
            .expect("bulk"),
        2
    );
    // An empty batch (an import whose devices all exist) inserts nothing and is no error.
    assert_eq!(store.insert_devices(&[]).await.expect("empty bulk"), 0);
    let back = store.device(&id("d2")).await.expect("get").expect("d2");
    assert_eq!(back.authentication.kind, AuthType::SelfSigned);
    assert_eq!(
        back.authentication
            .x509_thumbprint
            .primary_thumbprint
            .as_deref(),
        Some(tp)
    );
    assert_eq!(
        store
            .device(&id("d3"))
            .await
            .expect("get")
            .expect("d3")
            .authentication
            .kind,
        AuthType::CertificateAuthority
    );
    let stats = store.device_stats().await.expect("stats");
    assert_eq!((stats.total, stats.enabled, stats.disabled), (3, 2, 1));
    let listed: Vec<String> = store
        .devices(2)
        .await
        .expect("list")
        .iter()
        .map(|d| d.device_id.to_string())
        .collect();
    assert_eq!(listed, ["d1", "d2"]);

    // Bulk insert in batches.
    let many: Vec<_> = (0..1_234)
        .map(|i| device(&format!("bulk-{i:05}"), serde_json::json!({})))
        .collect();
    assert_eq!(store.insert_devices(&many).await.expect("bulk"), 1_234);
    assert_eq!(store.device_stats().await.expect("stats").total, 1_237);

    // Modules, and deleting a device takes its modules along.
    let m = serde_json::from_value::<ModuleInput>(serde_json::json!({"managedBy": "ops"}))
        .expect("input")
        .into_module(&id("d2"), &ModuleId::new("m1").expect("mid"), None, 3_000)
        .expect("module");
    assert_eq!(
        store.create_module(&m).await.expect("create"),
        WriteOutcome::Written
    );
    assert_eq!(
        store.create_module(&m).await.expect("again"),
        WriteOutcome::Exists
    );
    assert_eq!(
        store.modules(&id("d2")).await.expect("list"),
        vec![m.clone()]
    );
    assert_eq!(
        store
            .delete_device(&id("d2"), Some(&Etag("old".into())))
            .await
            .expect("stale"),
        DeleteOutcome::Stale
    );
    assert_eq!(
        store
            .delete_device(&id("d2"), Some(&d2.etag))
            .await
            .expect("delete"),
        DeleteOutcome::Deleted
    );
    assert_eq!(
        store.delete_device(&id("d2"), None).await.expect("gone"),
        DeleteOutcome::NotFound
    );
    assert!(store.modules(&id("d2")).await.expect("list").is_empty());

    // Policies are created once, settings round-trip, audit lists newest first.
    let p1 = store.policies().await.expect("policies");
    let p2 = store.policies().await.expect("policies");
    assert_eq!(p1.len(), 6);
    assert_eq!(p1, p2);
    let mut s = store.settings().await.expect("settings");
    assert!(!s.disable_device_sas);
    s.disable_device_sas = true;
    store.put_settings(&s).await.expect("put");
    assert!(store.settings().await.expect("settings").disable_device_sas);
    for (t, op) in [(1, "device.create"), (2, "device.delete")] {
        store
            .append_audit(&AuditRecord::new(
                t,
                "iothubowner",
                op,
                "devices/d1",
                "ok",
                "",
            ))
            .await
            .expect("audit");
    }
    let log = store.audit(10).await.expect("audit");
    assert_eq!(log[0].operation, "device.delete");
    assert_eq!(log.len(), 2);
    for target in ["devices/dev_1", "devices/dev_1/m1", "devices/devX1/m1"] {
        store
            .append_audit(&AuditRecord::new(
                3,
                "device",
                "device.connect",
                target,
                "ok",
                "",
            ))
            .await
            .expect("audit");
    }
    let filter = certhub_store::AuditFilter {
        operation: "device.connect".into(),
        target: "devices/dev_1".into(),
        outcome: String::new(),
    };
    let mine = store.audit_filtered(&filter, 10).await.expect("filtered");
    let targets: Vec<&str> = mine.iter().map(|r| r.target.as_str()).collect();
    assert_eq!(targets.len(), 2, "'_' is no wildcard: {targets:?}");
    assert!(!targets.contains(&"devices/devX1/m1"));
    // Retention: by age, then by count (the newest stay).
    assert_eq!(store.prune_audit(2, 100).await.expect("by age"), 1);
    assert_eq!(store.prune_audit(0, 3).await.expect("by count"), 1);
    let kept = store.audit(10).await.expect("audit");
    assert_eq!(kept.len(), 3);
    assert!(kept.iter().all(|r| r.operation == "device.connect"));
    assert_eq!(store.prune_audit(0, 3).await.expect("nothing over"), 0);

    // The telemetry log keeps order, bytes and properties.
    assert_eq!(store.last_telemetry_seq().await.expect("seq"), 0);
    let records: Vec<_> = (1..=450)
        .map(|i| certhub_store::TelemetryRecord {
            seq: i,
            device_id: if i % 2 == 0 { "d1".into() } else { "d3".into() },
            module_id: (i == 3).then(|| "m1".to_string()),
            enqueued_ms: 1_000 + i,
            properties: format!("{{\"application\":{{\"n\":\"{i}\"}}}}"),
            body: vec![0, 255, i as u8],
        })
        .collect();
    store.append_telemetry(&records).await.expect("append");
    assert_eq!(store.last_telemetry_seq().await.expect("seq"), 450);
    let page = store.telemetry_after(2, None, 3).await.expect("page");
    assert_eq!(page, records[2..5].to_vec());
    let d1 = store
        .telemetry_after(0, Some("d1"), 1000)
        .await
        .expect("d1");
    assert_eq!(d1.len(), 225);
    assert!(d1.iter().all(|r| r.device_id == "d1"));
    // Retention: by age (enqueued before 1 101 ms: seq 1..100), then by count (keep 300).
    assert_eq!(
        store.prune_telemetry(1_101, 1_000).await.expect("prune").0,
        100
    );
    assert_eq!(store.prune_telemetry(0, 300).await.expect("prune").0, 50);
    let left = store.telemetry_after(0, None, 1000).await.expect("left");
    assert_eq!((left.len(), left[0].seq), (300, 151));
    // A page stops once it holds PAGE_BYTES of bodies (with at least one message).
    let big: Vec<certhub_store::TelemetryRecord> = (451..=453)
        .map(|seq| certhub_store::TelemetryRecord {
            seq,
            device_id: "d1".into(),
            module_id: None,
            enqueued_ms: 2_000,
            properties: "{}".into(),
            body: vec![seq as u8; 3 << 20],
        })
        .collect();
    store.append_telemetry(&big).await.expect("append big");
    let page = store
        .telemetry_after(450, None, 10)
        .await
        .expect("big page");
    assert_eq!(page, big[..2].to_vec(), "4 MiB of bodies per page");
    let page = store
        .telemetry_after(452, None, 10)
        .await
        .expect("last page");
    assert_eq!(page, big[2..].to_vec());

    twins_and_c2d(store).await;
    mqtt_sessions(store).await;
    provisioning(store).await;
    bookkeeping(store).await;
    crl_sources(store).await;
}

/// Twins are written under their version; the C2D queue keeps order, caps, expiry and the
/// device's message count, and leaves feedback where it was asked for; twins and queue go with
/// their identity.
async fn twins_and_c2d(store: &Store) {
    use certhub_store::{C2dOutcome, C2dRecord, Enqueued, ServiceQueue, TwinRecord};
    let tw = device("tw1", serde_json::json!({}));
    store.create_device(&tw).await.expect("create");
    let m = serde_json::from_value::<ModuleInput>(serde_json::json!({}))
        .expect("input")
        .into_module(&id("tw1"), &ModuleId::new("m1").expect("id"), None, 1_000)
        .expect("module");
    store.create_module(&m).await.expect("module");

    assert!(store.twin("tw1", None).await.expect("twin").is_none());
    let v1 = TwinRecord {
        version: 1,
        state: "{\"a\":1}".into(),
    };
    assert!(
        store
            .write_twin("tw1", None, None, &v1)
            .await
            .expect("write")
    );
    // A second first write loses instead of failing.
    assert!(
        !store
            .write_twin("tw1", None, None, &v1)
            .await
            .expect("lose")
    );
    let v2 = TwinRecord {
        version: 2,
        state: "{\"a\":2}".into(),
    };
    assert!(
        !store
            .write_twin("tw1", None, Some(7), &v2)
            .await
            .expect("stale")
    );
    assert!(
        store
            .write_twin("tw1", None, Some(1), &v2)
            .await
            .expect("write")
    );
    assert_eq!(
        store.twin("tw1", None).await.expect("twin"),
        Some(v2.clone())
    );
    assert!(
        store
            .write_twin("tw1", Some("m1"), None, &v1)
            .await
            .expect("module twin")
    );
    assert_eq!(
        store.twin("tw1", Some("m1")).await.expect("twin"),
        Some(v1.clone())
    );
    // A page's device twins in one read: the range (after, last], modules' twins left out.
    let page = store.device_twins_in("tw0", "tw1").await.expect("range");
    assert_eq!(page.len(), 1, "{page:?}");
    assert_eq!(page.get("tw1"), Some(&v2));
    assert!(
        store
            .device_twins_in("tw1", "tw9")
            .await
            .expect("range")
            .is_empty()
    );
    // No twin for an identity that does not exist.
    assert!(
        !store
            .write_twin("ghost", None, None, &v1)
            .await
            .expect("ghost")
    );
    assert!(
        !store
            .write_twin("tw1", Some("ghost"), None, &v1)
            .await
            .expect("ghost module")
    );

    let msg = |n: i64, expiry_ms: i64| C2dRecord {
        id: 0,
        device_id: "tw1".into(),
        message_id: format!("m{n}"),
        properties: "{}".into(),
        body: vec![n as u8, 0, 255],
        enqueued_ms: 1_000 + n,
        expiry_ms,
        delivery_count: 0,
        ack: if n == 3 { "none" } else { "full" }.into(),
    };
    let mut ids = Vec::new();
    for n in 0..3 {
        match store
            .enqueue_c2d(&msg(n, 10_000), 3, 1_000)
            .await
            .expect("enqueue")
        {
            Enqueued::Stored(i) => ids.push(i),
            other => panic!("not stored: {other:?}"),
        }
    }
    assert!(ids.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(
        store
            .enqueue_c2d(&msg(9, 10_000), 3, 1_000)
            .await
            .expect("full"),
        Enqueued::QueueFull
    );
    let mut ghost = msg(9, 10_000);
    ghost.device_id = "ghost".into();
    assert_eq!(
        store.enqueue_c2d(&ghost, 3, 1_000).await.expect("ghost"),
        Enqueued::NoDevice
    );
    let read = store
        .device(&id("tw1"))
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(read.c2d_count, 3);
    let pending = store
        .pending_c2d("tw1", 0, 1_000, 10)
        .await
        .expect("pending");
    assert_eq!(pending.len(), 3);
    assert_eq!(pending[1].message_id, "m1");
    assert_eq!(pending[1].body, vec![1, 0, 255]);
    assert_eq!(
        store
            .pending_c2d("tw1", ids[1], 1_000, 10)
            .await
            .expect("after")
            .len(),
        1
    );
    assert_eq!(store.c2d_delivered(ids[0]).await.expect("delivered"), 1);
    assert_eq!(store.c2d_delivered(ids[0]).await.expect("delivered"), 2);
    let success = C2dOutcome::Success;
    assert!(
        store
            .remove_c2d("tw1", ids[0], success, 2_000)
            .await
            .expect("complete")
    );
    assert!(
        !store
            .remove_c2d("tw1", ids[0], success, 2_000)
            .await
            .expect("again")
    );
    // A device cannot complete another device's message.
    assert!(
        !store
            .remove_c2d("d1", ids[1], success, 2_000)
            .await
            .expect("other")
    );
    assert_eq!(
        store
            .device(&id("tw1"))
            .await
            .expect("get")
            .expect("exists")
            .c2d_count,
        2
    );
    // Expired messages are not pending, make room, and are dropped.
    assert!(
        store
            .pending_c2d("tw1", 0, 10_000, 10)
            .await
            .expect("late")
            .is_empty()
    );
    assert!(matches!(
        store
            .enqueue_c2d(&msg(5, 20_000), 2, 10_000)
            .await
            .expect("room"),
        Enqueued::Stored(_)
    ));
    assert_eq!(
        store.enqueue_c2d(&msg(6, 5_000), 9, 1_000).await.ok(),
        Some(Enqueued::Stored(ids[2] + 2))
    );
    // No feedback asked for: a message that leaves the queue leaves no record.
    let quiet = match store.enqueue_c2d(&msg(3, 5_000), 9, 1_000).await {
        Ok(Enqueued::Stored(i)) => i,
        other => panic!("not stored: {other:?}"),
    };
    assert!(
        store
            .remove_c2d("tw1", quiet, C2dOutcome::DeliveryCountExceeded, 2_000)
            .await
            .expect("dead letter")
    );
    assert_eq!(store.expire_c2d(6_000).await.expect("expire"), 1);
    assert_eq!(store.purge_c2d("tw1", 7_000).await.expect("purge"), 1);

    // Feedback: one record per message that left the queue with ack=full.
    let first = store
        .receive_feedback("t1", 20_000, 80_000, 3)
        .await
        .expect("receive");
    let second = store
        .receive_feedback("t2", 20_000, 80_000, 3)
        .await
        .expect("receive");
    assert_eq!((first.len(), second.len()), (3, 2));
    let mut seen: Vec<(String, String)> = first
        .iter()
        .chain(&second)
        .map(|f| (f.message_id.clone(), f.status.clone()))
        .collect();
    seen.sort();
    let want = [
        ("m0", "Success"),
        ("m1", "Expired"),
        ("m2", "Expired"),
        ("m5", "Purged"),
        ("m6", "Expired"),
    ];
    assert_eq!(
        seen,
        want.map(|(m, s)| (m.to_string(), s.to_string())).to_vec()
    );
    assert!(first.iter().all(|f| f.device_id == "tw1"));
    assert!(
        store
            .receive_feedback("t3", 20_000, 80_000, 3)
            .await
            .expect("none left")
            .is_empty()
    );
    // Abandoned records go to the next receiver; completed ones are gone.
    assert_eq!(
        store
            .abandon_locked(ServiceQueue::Feedback, "t2", 20_000)
            .await
            .expect("abandon"),
        2
    );
    let again = store
        .receive_feedback("t4", 20_000, 80_000, 10)
        .await
        .expect("receive");
    assert_eq!(again.len(), 2);
    assert_eq!(
        store
            .complete_locked(ServiceQueue::Feedback, "t1", 20_000)
            .await
            .expect("complete"),
        3
    );
    assert_eq!(
        store
            .complete_locked(ServiceQueue::Feedback, "t1", 20_000)
            .await
            .expect("twice"),
        0
    );
    // A lock that ran out cannot complete, and its records are received again.
    assert_eq!(
        store
            .complete_locked(ServiceQueue::Feedback, "t4", 90_000)
            .await
            .expect("late"),
        0
    );
    assert_eq!(
        store
            .receive_feedback("t5", 90_000, 150_000, 10)
            .await
            .expect("relocked")
            .len(),
        2
    );
    assert_eq!(
        store
            .prune_queue(ServiceQueue::Feedback, i64::MAX)
            .await
            .expect("prune"),
        2
    );
    assert_eq!(
        store
            .device(&id("tw1"))
            .await
            .expect("get")
            .expect("exists")
            .c2d_count,
        0
    );

    // Deleting the device takes its module twin, twin and queue with it.
    store
        .enqueue_c2d(&msg(7, 10_000), 3, 1_000)
        .await
        .expect("enqueue");
    assert_eq!(
        store.delete_device(&id("tw1"), None).await.expect("delete"),
        DeleteOutcome::Deleted
    );
    assert!(store.twin("tw1", None).await.expect("twin").is_none());
    assert!(store.twin("tw1", Some("m1")).await.expect("twin").is_none());
    assert!(
        store
            .pending_c2d("tw1", 0, 0, 10)
            .await
            .expect("gone")
            .is_empty()
    );
}

/// A bookkeeping batch writes audit records, last activity and the CA used, for devices and
/// modules; identities that are gone are skipped.
async fn bookkeeping(store: &Store) {
    use certhub_store::Bookkeeping;
    let d = device("bk1", serde_json::json!({}));
    store.create_device(&d).await.expect("create");
    let m = serde_json::from_value::<ModuleInput>(serde_json::json!({}))
        .expect("input")
        .into_module(&id("bk1"), &ModuleId::new("m1").expect("id"), None, 1_000)
        .expect("module");
    store.create_module(&m).await.expect("module");
    let before = store.devices_of_ca("bk-ca").await.expect("count");
    let batch = Bookkeeping {
        // Three records: a statement of two rows and one of one.
        audit: (0..3)
            .map(|i| {
                AuditRecord::new(
                    9_000_000 + i,
                    "device",
                    "device.connect",
                    "devices/bk1",
                    "ok",
                    &format!("batched-{i}"),
                )
            })
            .collect(),
        activity: vec![
            ("bk1".into(), String::new(), 42_000),
            ("bk1".into(), "m1".into(), 43_000),
            ("gone".into(), String::new(), 44_000),
        ],
        cas: vec![
            ("bk1".into(), String::new(), "bk-ca".into()),
            ("bk1".into(), "m1".into(), "bk-ca".into()),
            ("gone".into(), "m9".into(), "bk-ca".into()),
        ],
        chains: vec![
            ("bk1".into(), String::new(), "aa11 bb22".into(), 7_000),
            ("bk1".into(), "m1".into(), "aa11 cc33".into(), 8_000),
            ("gone".into(), String::new(), "bb22".into(), 9_000),
        ],
    };
    assert_eq!(batch.len(), 12);
    store.write_bookkeeping(&batch).await.expect("write");
    let read = store
        .device(&id("bk1"))
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(read.last_activity_ms, 42_000);
    assert_eq!(read.etag, d.etag, "activity is not an identity change");
    let module = store
        .module(&id("bk1"), &ModuleId::new("m1").expect("id"))
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(module.last_activity_ms, 43_000);
    assert_eq!(
        store.devices_of_ca("bk-ca").await.expect("count"),
        before + 2
    );
    // The chains: who last presented a certificate (a module by its device and module id).
    let with = |sha: &'static str| {
        let store = store.clone();
        async move {
            store
                .identities_with_chain_cert(sha)
                .await
                .expect("query")
                .into_iter()
                .map(|(d, m, _)| format!("{d}/{m}"))
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(with("AA11").await, ["bk1/", "bk1/m1"]);
    assert_eq!(with("bb22").await, ["bk1/"]);
    assert_eq!(with("cc33").await, ["bk1/m1"]);
    assert!(with("dd44").await.is_empty());
    // Expiry: bk1's leaf expires at 7 000 ms, m1's at 8 000; at 7 500 one has expired.
    let expiry = store.certificate_expiry(7_500, &[7]).await.expect("expiry");
    assert_eq!((expiry.total, expiry.expired), (2, 1), "{expiry:?}");
    assert_eq!(expiry.within, [(7, 1)], "{expiry:?}");
    assert_eq!(expiry.weeks, [(0, 1)], "{expiry:?}");
    assert_eq!(
        expiry.soonest,
        [
            ("bk1".to_string(), String::new(), 7_000),
            ("bk1".to_string(), "m1".to_string(), 8_000)
        ],
        "{expiry:?}"
    );
    // Announcements: each identity once per horizon it enters, once over all nodes.
    let announced = |now: i64| {
        let store = store.clone();
        async move {
            store
                .announce_expiry(now, &[90, 7, 30])
                .await
                .expect("announce")
                .into_iter()
                .map(|e| format!("{}/{} {}", e.device_id, e.module_id, e.horizon_days))
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(announced(7_500).await, ["bk1/ 0", "bk1/m1 7"]);
    assert!(announced(7_600).await.is_empty(), "announced already");
    assert_eq!(announced(9_000).await, ["bk1/m1 0"]);
    assert!(announced(9_000).await.is_empty());
    // A CA or chain equal to the stored one is not written again; a change of either part is.
    let again = Bookkeeping {
        cas: vec![
            ("bk1".into(), String::new(), "bk-ca2".into()),
            ("bk1".into(), "m1".into(), "bk-ca".into()),
        ],
        chains: vec![
            ("bk1".into(), String::new(), "aa11 bb22".into(), 70_000),
            ("bk1".into(), "m1".into(), "aa11 dd44".into(), 8_000),
        ],
        ..Bookkeeping::default()
    };
    store.write_bookkeeping(&again).await.expect("again");
    store
        .write_bookkeeping(&again)
        .await
        .expect("the same again");
    assert_eq!(
        store.devices_of_ca("bk-ca").await.expect("count"),
        before + 1
    );
    assert_eq!(store.devices_of_ca("bk-ca2").await.expect("count"), 1);
    assert_eq!(with("dd44").await, ["bk1/m1"]);
    assert!(with("cc33").await.is_empty());
    assert_eq!(with("bb22").await, ["bk1/"]);
    let expiry = store.certificate_expiry(9_000, &[7]).await.expect("expiry");
    assert_eq!(
        expiry.soonest,
        [
            ("bk1".to_string(), "m1".to_string(), 8_000),
            ("bk1".to_string(), String::new(), 70_000)
        ],
        "{expiry:?}"
    );
    let log = store.audit(3).await.expect("audit");
    let details: Vec<&str> = log.iter().map(|r| r.detail.as_str()).collect();
    assert_eq!(details, ["batched-2", "batched-1", "batched-0"]);
    store
        .write_bookkeeping(&Bookkeeping::default())
        .await
        .expect("empty");
    assert_eq!(
        store.delete_device(&id("bk1"), None).await.expect("delete"),
        DeleteOutcome::Deleted
    );
}

/// CRL distribution points: learnt once, due by their schedule (only for CAs that fetch),
/// claimed by one node at a time, their outcome recorded.
async fn crl_sources(store: &Store) {
    let ca = certhub_store::CaRecord {
        name: "crl-ca".into(),
        pem: "pem".into(),
        subject: "CN=X".into(),
        issuer: "CN=X".into(),
        sha1: "a".repeat(40),
        sha256: "b".repeat(64),
        not_before_ms: 0,
        not_after_ms: 1,
        is_verified: true,
        etag: Etag::random(),
        verification_code: None,
        code_expires_ms: 0,
        created_ms: 0,
        updated_ms: 0,
    };
    assert_eq!(
        store.create_ca(&ca).await.expect("ca"),
        WriteOutcome::Written
    );
    let source = certhub_store::CrlSource {
        ca: "crl-ca".into(),
        issuer_key: "c".repeat(64),
        url: "http://127.0.0.1:1/x.crl".into(),
        issuer: "CN=Y".into(),
        issuer_chain: String::new(),
        found_ms: 1_000,
        next_fetch_ms: 1_000,
        fetched_ms: 0,
        ok_ms: 0,
        failures: 0,
        error: String::new(),
    };
    assert!(store.add_crl_source(&source).await.expect("add"));
    assert!(
        !store.add_crl_source(&source).await.expect("again"),
        "known already"
    );
    assert!(store.due_crl_sources(999).await.expect("due").is_empty());
    let due = store.due_crl_sources(1_000).await.expect("due");
    assert_eq!(due, vec![source.clone()]);
    // Two nodes read it due; one claims it.
    assert!(
        store
            .claim_crl_source(&source, 1_000, 61_000)
            .await
            .expect("claim")
    );
    assert!(
        !store
            .claim_crl_source(&source, 1_000, 61_000)
            .await
            .expect("claim")
    );
    assert!(store.due_crl_sources(2_000).await.expect("due").is_empty());
    store
        .record_crl_fetch(&source, 2_000, "HTTP 404", 5_000)
        .await
        .expect("failed");
    store
        .record_crl_fetch(&source, 5_000, "timed out", 9_000)
        .await
        .expect("failed");
    let got = &store.crl_sources_of("crl-ca").await.expect("list")[0];
    assert_eq!((got.failures, got.ok_ms, got.fetched_ms), (2, 0, 5_000));
    assert_eq!(
        (got.error.as_str(), got.next_fetch_ms),
        ("timed out", 9_000)
    );
    store
        .record_crl_fetch(&source, 9_000, "", 3_609_000)
        .await
        .expect("ok");
    let got = &store.crl_sources().await.expect("list")[0];
    assert_eq!(
        (got.failures, got.ok_ms, got.error.as_str()),
        (0, 9_000, "")
    );
    // A CA that does not fetch has nothing due; switched back on, everything is due now.
    assert!(
        store
            .crl_fetch_settings()
            .await
            .expect("settings")
            .is_empty()
    );
    assert!(store.set_crl_fetch("crl-ca", false).await.expect("off"));
    assert!(
        !store
            .set_crl_fetch("nope", false)
            .await
            .expect("no such CA")
    );
    assert_eq!(
        store.crl_fetch_settings().await.expect("settings"),
        vec![("crl-ca".to_string(), false)]
    );
    assert!(
        store
            .due_crl_sources(i64::MAX)
            .await
            .expect("due")
            .is_empty()
    );
    assert!(store.set_crl_fetch("crl-ca", true).await.expect("on"));
    store
        .crl_sources_due_now("crl-ca", 10_000)
        .await
        .expect("due now");
    assert_eq!(store.due_crl_sources(10_000).await.expect("due").len(), 1);
    assert_eq!(
        store.delete_crl_sources_of("crl-ca").await.expect("delete"),
        1
    );
    assert!(store.crl_sources().await.expect("list").is_empty());
    store.delete_ca("crl-ca", None).await.expect("delete ca");

    // Intermediates seen in chains: recorded once, announced once per horizon.
    let day = 86_400_000;
    let tz = certhub_store::IntermediateRecord {
        sha256: "d".repeat(64),
        subject: "CN=Technician-Z".into(),
        issuer: "CN=Factory-Y".into(),
        not_after_ms: 100 * day,
        ca: "crl-ca".into(),
        first_seen_ms: 1,
    };
    assert!(store.add_intermediate(&tz).await.expect("add"));
    assert!(!store.add_intermediate(&tz).await.expect("again"));
    let fy = certhub_store::IntermediateRecord {
        sha256: "e".repeat(64),
        subject: "CN=Factory-Y".into(),
        not_after_ms: 10 * day,
        ..tz.clone()
    };
    assert!(store.add_intermediate(&fy).await.expect("add"));
    let listed: Vec<String> = store
        .intermediates()
        .await
        .expect("list")
        .into_iter()
        .map(|r| r.subject)
        .collect();
    assert_eq!(listed, ["CN=Factory-Y", "CN=Technician-Z"], "soonest first");
    // One by its thumbprint (whatever the case asked in); an unknown one is None.
    let found = store
        .intermediate(&"D".repeat(64))
        .await
        .expect("lookup")
        .expect("known");
    assert_eq!(found.subject, "CN=Technician-Z");
    assert_eq!(found.not_after_ms, 100 * day);
    assert!(
        store
            .intermediate(&"f".repeat(64))
            .await
            .expect("lookup")
            .is_none()
    );
    let announced = |now: i64| {
        let store = store.clone();
        async move {
            store
                .announce_intermediate_expiry(now, &[7, 30, 90])
                .await
                .expect("announce")
                .into_iter()
                .map(|(r, h)| format!("{} {h}", r.subject))
                .collect::<Vec<_>>()
        }
    };
    // At day 0 Factory-Y (day 10) is within 30 days; Technician-Z (day 100) within none.
    assert_eq!(announced(0).await, ["CN=Factory-Y 30"]);
    assert!(announced(day).await.is_empty());
    assert_eq!(
        announced(11 * day).await,
        ["CN=Factory-Y 0", "CN=Technician-Z 90"]
    );
}

/// Persistent MQTT sessions are saved, replaced, listed, and go with their identity.
async fn mqtt_sessions(store: &Store) {
    for name in ["ms1", "ms2"] {
        let d = device(name, serde_json::json!({}));
        store.create_device(&d).await.expect("create");
    }
    let m = serde_json::from_value::<ModuleInput>(serde_json::json!({}))
        .expect("input")
        .into_module(&id("ms1"), &ModuleId::new("m1").expect("id"), None, 1_000)
        .expect("module");
    store.create_module(&m).await.expect("module");
    for (client, subs) in [
        ("ms1", "[1]"),
        ("ms1/m1", "[2]"),
        ("ms2", "[3]"),
        ("ms1", "[4]"),
    ] {
        store
            .save_mqtt_session(client, subs, 1_000)
            .await
            .expect("save");
    }
    let listed = |store: &Store| {
        let store = store.clone();
        async move {
            let mut all = store.mqtt_sessions().await.expect("list");
            all.sort();
            all
        }
    };
    let pair = |c: &str, s: &str| (c.to_string(), s.to_string());
    assert_eq!(
        listed(store).await,
        vec![
            pair("ms1", "[4]"),
            pair("ms1/m1", "[2]"),
            pair("ms2", "[3]")
        ]
    );
    let mid = ModuleId::new("m1").expect("id");
    assert_eq!(
        store
            .delete_module(&id("ms1"), &mid, None)
            .await
            .expect("delete module"),
        DeleteOutcome::Deleted
    );
    assert_eq!(
        listed(store).await,
        vec![pair("ms1", "[4]"), pair("ms2", "[3]")]
    );
    assert_eq!(
        store.delete_device(&id("ms1"), None).await.expect("delete"),
        DeleteOutcome::Deleted
    );
    store.delete_mqtt_session("ms2").await.expect("forget");
    assert!(listed(store).await.is_empty());
    store
        .delete_mqtt_session("ms2")
        .await
        .expect("twice is fine");
    assert_eq!(
        store.delete_device(&id("ms2"), None).await.expect("delete"),
        DeleteOutcome::Deleted
    );
}

/// Enrollments are written under their ETag and paged in id order; registration states are
/// written once, then only over the ETag read; linked hubs and the ID scope round-trip.
async fn provisioning(store: &Store) {
    let rec = |id: &str, etag: &str| EnrollmentRecord {
        id: id.into(),
        doc: format!(r#"{{"enrollmentGroupId":"{id}"}}"#),
        etag: Etag(etag.into()),
        created_ms: 1,
        updated_ms: 1,
    };
    for kind in [EnrollmentKind::Group, EnrollmentKind::Individual] {
        for i in 0..5 {
            let r = rec(&format!("e{i}"), "t0");
            assert_eq!(
                store.create_enrollment(kind, &r).await.expect("create"),
                WriteOutcome::Written
            );
        }
        assert_eq!(
            store
                .create_enrollment(kind, &rec("e1", "t9"))
                .await
                .expect("again"),
            WriteOutcome::Exists
        );
        let first = store.enrollments(kind, "", 3).await.expect("page");
        let rest = store.enrollments(kind, "e2", 3).await.expect("page");
        let ids: Vec<String> = first.iter().chain(&rest).map(|r| r.id.clone()).collect();
        assert_eq!(ids, ["e0", "e1", "e2", "e3", "e4"]);
        assert_eq!(
            store
                .replace_enrollment(kind, &rec("e1", "t1"), &Etag("stale".into()))
                .await
                .expect("replace"),
            WriteOutcome::Stale
        );
        assert_eq!(
            store
                .replace_enrollment(kind, &rec("e1", "t1"), &Etag("t0".into()))
                .await
                .expect("replace"),
            WriteOutcome::Written
        );
        assert_eq!(
            store
                .enrollment(kind, "e1")
                .await
                .expect("read")
                .expect("there")
                .etag
                .0,
            "t1"
        );
        assert_eq!(
            store
                .delete_enrollment(kind, "e1", Some(&Etag("t0".into())))
                .await
                .expect("delete"),
            DeleteOutcome::Stale
        );
        assert_eq!(
            store
                .delete_enrollment(kind, "e1", Some(&Etag("t1".into())))
                .await
                .expect("delete"),
            DeleteOutcome::Deleted
        );
        assert_eq!(
            store
                .delete_enrollment(kind, "e1", None)
                .await
                .expect("delete"),
            DeleteOutcome::NotFound
        );
    }
    let reg = |id: &str, hub: &str, etag: &str| RegistrationRecord {
        id: id.into(),
        group_id: "e0".into(),
        assigned_hub: hub.into(),
        operation_id: format!("4.{etag}"),
        doc: "{}".into(),
        etag: Etag(etag.into()),
        created_ms: 1,
        updated_ms: 1,
    };
    assert_eq!(
        store
            .put_registration(&reg("r1", "a", "x"), None)
            .await
            .expect("put"),
        WriteOutcome::Written
    );
    assert_eq!(
        store
            .put_registration(&reg("r1", "b", "y"), None)
            .await
            .expect("put"),
        WriteOutcome::Exists
    );
    assert_eq!(
        store
            .put_registration(&reg("r1", "b", "y"), Some(&Etag("z".into())))
            .await
            .expect("put"),
        WriteOutcome::Stale
    );
    assert_eq!(
        store
            .put_registration(&reg("r1", "b", "y"), Some(&Etag("x".into())))
            .await
            .expect("put"),
        WriteOutcome::Written
    );
    store
        .put_registration(&reg("r2", "b", "w"), None)
        .await
        .expect("put");
    store
        .put_registration(&reg("r3", "a", "v"), None)
        .await
        .expect("put");
    let mut per_hub = store.registrations_per_hub().await.expect("counts");
    per_hub.sort();
    assert_eq!(per_hub, [("a".to_string(), 1), ("b".to_string(), 2)]);
    let of_group = store.registrations_of("e0", "r1", 10).await.expect("page");
    assert_eq!(
        of_group.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
        ["r2", "r3"]
    );
    assert_eq!(
        store
            .registration("r1")
            .await
            .expect("read")
            .expect("there")
            .assigned_hub,
        "b"
    );
    assert_eq!(
        store.delete_registration("r1", None).await.expect("delete"),
        DeleteOutcome::Deleted
    );
    let hub = LinkedHubRecord {
        name: "hub-b".into(),
        connection_string: "HostName=hub-b;SharedAccessKeyName=p;SharedAccessKey=k".into(),
        server_ca: "pem".into(),
        weight: 2,
        apply_allocation: true,
        created_ms: 1,
    };
    store.put_linked_hub(&hub).await.expect("link");
    store
        .put_linked_hub(&LinkedHubRecord {
            weight: 3,
            ..hub.clone()
        })
        .await
        .expect("relink");
    assert_eq!(
        store.linked_hubs().await.expect("list"),
        [LinkedHubRecord { weight: 3, ..hub }]
    );
    assert!(store.delete_linked_hub("hub-b").await.expect("unlink"));
    assert!(!store.delete_linked_hub("hub-b").await.expect("unlink"));
    // Change counters that processes sharing the database poll.
    let before = store.generations().await.expect("generations");
    let count =
        |g: &[(String, i64)], name: &str| g.iter().find(|(n, _)| n == name).map_or(0, |(_, c)| *c);
    store.bump_generation("test").await.expect("bump");
    store.bump_generation("test").await.expect("bump");
    let after = store.generations().await.expect("generations");
    assert_eq!(count(&after, "test"), count(&before, "test") + 2);
    let scope = store.id_scope("0ne00000001").await.expect("scope");
    assert_eq!(store.id_scope("0ne00000002").await.expect("scope"), scope);
}

/// The telemetry log in segments: reads and chains across them, whole segments dropped, and
/// a reader in another process that learns of a new segment. `reader` reads the log `writer`
/// writes (a store of its own on SQLite, as another process would have).
async fn telemetry_segments(writer: &Store, reader: &Store) {
    use certhub_store::TelemetryRecord;
    writer.own_telemetry_segments();
    let last = writer.last_telemetry_seq().await.expect("seq");
    let first = writer.telemetry_bounds().await.expect("bounds").first_seq;
    let _ = reader
        .telemetry_bounds()
        .await
        .expect("the reader reads the list");
    // A new segment starts above everything stored; an empty newest is not rolled again.
    assert_eq!(
        writer.roll_telemetry_segment(None).await.expect("roll"),
        Some(last + 1)
    );
    assert_eq!(
        writer.roll_telemetry_segment(None).await.expect("roll"),
        None
    );
    assert_eq!(writer.last_telemetry_seq().await.expect("seq"), last);
    // 200 messages in two segments; every third is s1's, each pointing to s1's previous one.
    let make = |seq: i64| TelemetryRecord {
        seq,
        device_id: if seq % 3 == 0 {
            "s1".into()
        } else {
            "s2".into()
        },
        module_id: None,
        enqueued_ms: 10_000 + seq,
        properties: "{}".into(),
        body: seq.to_be_bytes().to_vec(),
    };
    let mut heads = std::collections::HashMap::<String, i64>::new();
    let mut link = |records: &[TelemetryRecord]| -> Vec<Option<i64>> {
        records
            .iter()
            .map(|r| heads.insert(r.device_id.clone(), r.seq))
            .collect()
    };
    let one: Vec<_> = (last + 1..=last + 100).map(make).collect();
    let prev = link(&one);
    writer
        .append_telemetry_linked(&one, &prev)
        .await
        .expect("append");
    // The reader has the list from before the next roll.
    assert_eq!(
        reader.telemetry_after(last, None, 1).await.expect("read")[0].seq,
        last + 1
    );
    let bytes_one: i64 = one.iter().map(certhub_store::telemetry_bytes).sum();
    assert_eq!(
        writer
            .roll_telemetry_segment(Some((100, bytes_one)))
            .await
            .expect("roll"),
        Some(last + 101)
    );
    let two: Vec<_> = (last + 101..=last + 200).map(make).collect();
    let prev = link(&two);
    writer
        .append_telemetry_linked(&two, &prev)
        .await
        .expect("append");
    assert_eq!(writer.last_telemetry_seq().await.expect("seq"), last + 200);
    // A page runs on across segments, on the writer and on the other reader.
    for store in [writer, reader] {
        for from in [last - 1, last + 95] {
            let page = store.telemetry_after(from, None, 10).await.expect("page");
            let seqs: Vec<i64> = page.iter().map(|r| r.seq).collect();
            assert_eq!(seqs, (from + 1..=from + 10).collect::<Vec<_>>());
        }
        let page = store
            .telemetry_after(last + 50, None, 1000)
            .await
            .expect("page");
        assert_eq!(page.len(), 150, "to the newest segment's end");
        let s1 = store
            .telemetry_after(last, Some("s1"), 1000)
            .await
            .expect("s1");
        let expected: Vec<i64> = (last + 1..=last + 200).filter(|s| s % 3 == 0).collect();
        assert_eq!(s1.iter().map(|r| r.seq).collect::<Vec<_>>(), expected);
        // The chain walks back across the segment boundary.
        let head = *expected.last().expect("s1 sent");
        let walk = store
            .telemetry_chain(head, "s1", last, 1000)
            .await
            .expect("walk");
        assert_eq!(walk.mine, expected);
        assert!(walk.ended);
        assert_eq!(walk.oldest, expected.first().copied());
        let short = store
            .telemetry_chain(head, "s1", last, 40)
            .await
            .expect("walk");
        assert_eq!(short.mine, expected[expected.len() - 40..].to_vec());
        assert!(!short.ended, "stopped at its limit");
        let at = store
            .telemetry_at(&[last + 3, last + 150], None)
            .await
            .expect("at");
        assert_eq!(
            at.iter().map(|r| r.seq).collect::<Vec<_>>(),
            [last + 3, last + 150]
        );
    }
    let newest = writer
        .telemetry_newest_after(last + 90)
        .await
        .expect("newest");
    assert_eq!(newest.len(), 2);
    assert!(newest.contains(&("s1".to_string(), last + 198)));
    // Sealed segments are counted (by the writer's figures on SQLite, by reading elsewhere).
    let list = writer.telemetry_segments(false).await.expect("segments");
    assert_eq!(list.len(), 3, "{list:?}");
    assert_eq!(list[1].counted, Some((100, bytes_one)));
    assert_eq!(list[2].counted, None, "the newest is not counted");
    let (old_messages, old_bytes) = list[0].counted.expect("sealed: counted");
    assert!(first.is_some_and(|f| f <= last) && old_messages > 0);
    // Retention by count drops a segment whole when it all goes.
    assert_eq!(
        writer.prune_telemetry(0, 200).await.expect("prune"),
        (old_messages as u64, old_bytes)
    );
    // The newest cannot be dropped; the others go whole, and reads go on without them.
    assert!(writer.drop_telemetry_segment(list[2].id).await.is_err());
    assert!(
        writer
            .drop_telemetry_segment(list[1].id)
            .await
            .expect("drop")
    );
    assert!(
        !writer
            .drop_telemetry_segment(list[1].id)
            .await
            .expect("drop"),
        "already gone"
    );
    let bounds = reader.telemetry_bounds().await.expect("bounds");
    assert_eq!(bounds.first_seq, Some(last + 101));
    assert_eq!(bounds.last.map(|l| l.0), Some(last + 200));
    let in_two: Vec<i64> = (last + 101..=last + 200).filter(|s| s % 3 == 0).collect();
    let walk = reader
        .telemetry_chain(*in_two.last().expect("s1"), "s1", 0, 1000)
        .await
        .expect("walk");
    assert_eq!(walk.mine, in_two);
    assert!(walk.ended, "the chain ends where its segment was dropped");
    assert_eq!(walk.oldest, in_two.first().copied());
    let size = writer.telemetry_size().await.expect("size");
    let all: i64 = two.iter().map(certhub_store::telemetry_bytes).sum();
    assert_eq!(size, all);
    assert_eq!(
        writer
            .telemetry_seq_before_time(10_000 + last + 120, true)
            .await
            .expect("time"),
        last + 119
    );
    // Retention keeps the newest 50: the newest segment loses its first 50 rows.
    let bytes_gone: i64 = two[..50].iter().map(certhub_store::telemetry_bytes).sum();
    assert_eq!(
        writer.prune_telemetry(0, 50).await.expect("prune"),
        (50, bytes_gone)
    );
    assert_eq!(
        writer.telemetry_segments(false).await.expect("list").len(),
        1
    );
    let left = reader.telemetry_after(0, None, 1000).await.expect("left");
    assert_eq!((left.len(), left[0].seq), (50, last + 151));
    let walk = reader
        .telemetry_chain(*in_two.last().expect("s1"), "s1", 0, 1000)
        .await
        .expect("walk");
    assert!(walk.ended, "the chain ends where its rows were deleted");
    assert_eq!(walk.mine.first(), in_two.iter().find(|s| **s > last + 150));
}

#[tokio::test]
async fn sqlite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("certhub.db");
    let store = Store::open_sqlite(&path).await.expect("open");
    suite(&store).await;
    let other = Store::open_sqlite(&path).await.expect("a second process");
    telemetry_segments(&store, &other).await;
    other.close().await;
    store.close().await;
    // Reopening finds everything, and the schema is not applied twice.
    let store = Store::open_sqlite(&path).await.expect("reopen");
    assert_eq!(store.device_stats().await.expect("stats").total, 1_236);
    // The registry read into memory at start (in pages of 500), and
    // a write after it is still what the connect path sees.
    assert_eq!(store.warm_identities().await.expect("warm"), 1_236);
    let kept = store
        .device_for_connect(&id("d1"))
        .await
        .expect("read")
        .expect("exists");
    let enabled = serde_json::from_value::<DeviceInput>(serde_json::json!({"status": "enabled"}))
        .expect("input")
        .into_device(&id("d1"), Some(&kept), 3_000)
        .expect("update");
    assert_eq!(
        store
            .replace_device(&enabled, &kept.etag)
            .await
            .expect("replace"),
        WriteOutcome::Written
    );
    let seen = store
        .device_for_connect(&id("d1"))
        .await
        .expect("read")
        .expect("exists");
    assert_eq!(seen.status, Status::Enabled);
    assert_ne!(seen.status, kept.status, "the write was seen");
}

#[tokio::test]
async fn postgres() {
    certhub_store::scratch::on_postgres("certhub_test", |store| async move {
        suite(&store).await;
        telemetry_segments(&store, &store).await;
        // A store that does not listen for identity changes keeps none in memory: nothing to
        // warm (`certhub serve` listens; see the next test).
        assert_eq!(store.warm_identities().await.expect("warm"), 0);
    })
    .await;
}

/// On PostgreSQL a hub hears the persistent MQTT sessions written by any process (schema step
/// 20's trigger): once it listens and has read its copy again, a connection reads its saved
/// session only after an announced write of it, once.
#[tokio::test]
async fn postgres_session_writes_made_elsewhere_are_heard() {
    let Some((scratch, hub, elsewhere)) = hub_and_elsewhere("certhub_sessions_heard").await else {
        return;
    };
    assert!(
        hub.mqtt_session_unsure("d1"),
        "not listening: read at every connection"
    );
    hub.keep_identities_listening().await.expect("listen");
    let mut listening = hub.mqtt_session_listening();
    let generation = *listening.borrow_and_update();
    assert!(generation > 0, "listening began");
    assert!(
        hub.mqtt_session_unsure("d1"),
        "the copy is not read again yet"
    );
    hub.mqtt_sessions_read_again(generation + 1);
    assert!(
        hub.mqtt_session_unsure("d1"),
        "read again for another listening"
    );
    hub.mqtt_sessions_read_again(generation);
    assert!(!hub.mqtt_session_unsure("d1"), "the copy is the database's");
    let heard = |client_id: &'static str| {
        let hub = hub.clone();
        async move {
            for _ in 0..200 {
                if hub.mqtt_session_unsure(client_id) {
                    // Once: the connection that reads it has the database's copy.
                    assert!(
                        !hub.mqtt_session_unsure(client_id),
                        "{client_id} read twice"
                    );
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            panic!("the write of {client_id}'s session was not heard");
        }
    };
    elsewhere
        .save_mqtt_session("d1", "{\"a\":1}", 1)
        .await
        .expect("save");
    heard("d1").await;
    elsewhere
        .save_mqtt_session("d1/m1", "{}", 2)
        .await
        .expect("save module's");
    heard("d1/m1").await;
    elsewhere
        .save_mqtt_session("d1", "{\"a\":0}", 3)
        .await
        .expect("save again");
    heard("d1").await;
    elsewhere.delete_mqtt_session("d1").await.expect("delete");
    heard("d1").await;
    assert!(!hub.mqtt_session_unsure("d2"), "never written");
    elsewhere.close().await;
    scratch.drop_database().await.expect("drop database");
}

/// A scratch PostgreSQL database (None when none is reachable, as off CI) opened twice: the
/// hub under test (not listening yet) and another process writing beside it. The caller
/// closes the other and drops the database at the end.
async fn hub_and_elsewhere(
    prefix: &str,
) -> Option<(certhub_store::scratch::Scratch, Store, Store)> {
    let scratch = certhub_store::scratch::postgres(prefix)
        .await
        .expect("scratch database")?;
    let hub = scratch.store.clone();
    let elsewhere = Store::open(&scratch.url).await.expect("another process");
    Some((scratch, hub, elsewhere))
}

/// On PostgreSQL a hub keeps identities in memory and forgets each one the database announces
/// as changed, whichever process changed it (schema step 19's trigger).
#[tokio::test]
async fn postgres_identity_changes_made_elsewhere_are_heard() {
    let Some((scratch, hub, elsewhere)) = hub_and_elsewhere("certhub_heard").await else {
        return;
    };
    hub.keep_identities_listening().await.expect("listen");
    let d = device("heard-1", serde_json::json!({}));
    assert_eq!(
        elsewhere.create_device(&d).await.expect("create"),
        WriteOutcome::Written
    );
    assert_eq!(
        hub.warm_identities().await.expect("warm"),
        1,
        "kept in memory"
    );
    let seen = hub
        .device_for_connect(&id("heard-1"))
        .await
        .expect("read")
        .expect("exists");
    assert_eq!(seen.status, Status::Enabled);
    // Disabled by another process: the hub hears it and reads the row again.
    let disabled = serde_json::from_value::<DeviceInput>(serde_json::json!({"status": "disabled"}))
        .expect("input")
        .into_device(&id("heard-1"), Some(&seen), 2_000)
        .expect("update");
    assert_eq!(
        elsewhere
            .replace_device(&disabled, &seen.etag)
            .await
            .expect("replace"),
        WriteOutcome::Written
    );
    let heard = |want: Option<Status>| {
        let hub = hub.clone();
        async move {
            for _ in 0..200 {
                let now = hub
                    .device_for_connect(&id("heard-1"))
                    .await
                    .expect("read")
                    .map(|d| d.status);
                if now == want {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            panic!("the hub still sees the device as it was, not {want:?}");
        }
    };
    heard(Some(Status::Disabled)).await;
    // Deleted by another process: heard too.
    elsewhere
        .delete_device(&id("heard-1"), None)
        .await
        .expect("delete");
    heard(None).await;
    elsewhere.close().await;
    scratch.drop_database().await.expect("drop database");
}
