//! File upload against a real `certhub serve`: the Azure IoT Python device SDK
//! (`get_storage_info_for_blob`, `notify_blob_upload_status`) with the Azure Storage blob client
//! (`azure-storage-blob`, Put Blob and Put Block / Put Block List) for the X.509 widget and a
//! SAS device (tests/interop/upload.py), the CLI listing and reading the files back; and the
//! bad input the blob endpoint and the device routes must refuse, with curl as the device.

mod common;

use std::path::Path;
use std::process::Command;

use common::{HubProcess, certhub_at, enroll_widget, s, tmp};

const WIDGET: &str = "smart-x-widget-0001";

#[test]
fn python_sdk_uploads_files_and_the_cli_reads_them_back() {
    const HOST: &str = "127.0.0.6";
    let t = tmp();
    let d = t.path();
    let data = d.join("data");
    let _hub = common::hub_after_python_uploads(d, HOST, &[]);
    let hub = |args: &[&str]| certhub_at(d, &data, args).ok();

    // The operator lists the widget's uploads and reads one back with the CLI.
    let listed = hub(&["files", "list", "--device", WIDGET]).stdout;
    let core = listed
        .lines()
        .find(|l| l.ends_with(&format!("{WIDGET}/dumps/core.bin")))
        .unwrap_or_else(|| panic!("core.bin is listed:\n{listed}"));
    assert!(core.starts_with("succeeded"), "{core}");
    assert!(
        core.contains(&(5 * 1024 * 1024 + 123).to_string()),
        "{core}"
    );
    assert!(
        listed.lines().any(|l| l.starts_with("failed")),
        "the failed upload is listed:\n{listed}"
    );
    let copy = d.join("core.bin");
    hub(&[
        "files",
        "get",
        &format!("{WIDGET}/dumps/core.bin"),
        "--out",
        s(&copy),
    ]);
    let bytes = std::fs::read(&copy).expect("downloaded");
    let expected: Vec<u8> = (0..5 * 1024 * 1024 + 123)
        .map(|i: usize| ((i * 7 + i / 1024) % 251) as u8)
        .collect();
    assert!(bytes == expected, "the CLI reads back the same bytes");
    // By correlation id.
    let cid = core.split_whitespace().nth(3).expect("correlation id");
    let again = d.join("again.bin");
    hub(&["files", "get", cid, "--out", s(&again)]);
    assert!(std::fs::read(&again).expect("downloaded") == expected);
    // To standard output (the file upload.py overwrote with "again").
    let out = hub(&["files", "get", &format!("{WIDGET}/reports/today.csv")]);
    assert_eq!(out.stdout, "again");
    // The notifications were all received by upload.py; the CLI finds none.
    let out = certhub_at(d, &data, &["files", "notifications"]).ok();
    assert!(out.stdout.is_empty(), "{}", out.stdout);
    // Where the bytes live: the data directory's files/ folder.
    assert!(
        data.join("files/blobs")
            .join(WIDGET)
            .join("dumps/core.bin")
            .is_file()
    );
}

/// `curl` to the hub's 443 listener on `localhost`: (HTTP status, headers and body).
/// Every file under `dir`, as paths.
fn files_under(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut folders = vec![dir.to_path_buf()];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                folders.push(path);
            } else {
                found.push(path.display().to_string());
            }
        }
    }
    found
}

fn curl(hub: &HubProcess, data: &Path, url_path: &str, extra: &[&str]) -> (u16, String) {
    let url = format!("https://localhost:{}{url_path}", hub.https_port());
    curl_url(data, &url, extra)
}

fn curl_url(data: &Path, url: &str, extra: &[&str]) -> (u16, String) {
    let ca = data.join("tls/server-ca.pem");
    let out = Command::new("curl")
        .args([
            "-sS",
            "--path-as-is",
            "-o",
            "-",
            "-w",
            "\n%{http_code}",
            "--cacert",
            s(&ca),
        ])
        .args(extra)
        .arg(url)
        .output()
        .expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    let code = code.trim().parse().unwrap_or(0);
    if code == 0 {
        // curl's own error, for the assertion's message.
        return (0, String::from_utf8_lossy(&out.stderr).to_string());
    }
    (code, body.to_string())
}

/// What a blob URI is made of, as the SDKs join it.
struct Grant {
    correlation_id: String,
    blob_name: String,
    token: String,
    url: String,
}

/// The widget as a curl device: asks for blob URIs and writes blocks.
struct Uploader<'a> {
    hub: &'a HubProcess,
    data: &'a Path,
    /// curl's client certificate arguments.
    x509: Vec<&'a str>,
}

impl Uploader<'_> {
    fn begin(&self, name: &str) -> (u16, String) {
        let mut args = self.x509.clone();
        let body = serde_json::json!({ "blobName": name }).to_string();
        args.extend([
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "--data-binary",
        ]);
        args.push(&body);
        curl(
            self.hub,
            self.data,
            &format!("/devices/{WIDGET}/files?api-version=2021-04-12"),
            &args,
        )
    }

    fn grant(&self, name: &str) -> Grant {
        let (code, body) = self.begin(name);
        assert_eq!(code, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("json");
        let g = |k: &str| v[k].as_str().expect(k).to_string();
        Grant {
            url: format!(
                "https://{}/{}/{}{}",
                g("hostName"),
                g("containerName"),
                g("blobName"),
                g("sasToken")
            ),
            correlation_id: g("correlationId"),
            blob_name: g("blobName"),
            token: g("sasToken"),
        }
    }

    /// Put Block of `body` under the block id `id` (base64).
    fn block(&self, g: &Grant, id: &str, body: &str, extra: &[&str]) -> (u16, String) {
        let mut args = vec!["-X", "PUT", "--data-binary", body];
        args.extend(extra);
        curl_url(
            self.data,
            &format!("{}&comp=block&blockid={id}", g.url),
            &args,
        )
    }

    /// Put Block List naming `ids` in order.
    fn list(&self, g: &Grant, ids: &[&str], extra: &[&str]) -> (u16, String) {
        let latest: String = ids
            .iter()
            .map(|id| format!("<Latest>{id}</Latest>"))
            .collect();
        let xml =
            format!("<?xml version=\"1.0\" encoding=\"utf-8\"?><BlockList>{latest}</BlockList>");
        let mut args = vec!["-X", "PUT", "--data-binary", &xml];
        args.extend(extra);
        curl_url(self.data, &format!("{}&comp=blocklist", g.url), &args)
    }
}

#[test]
fn bad_input_to_file_upload_is_refused_and_nothing_is_stored() {
    let t = tmp();
    let d = t.path();
    let data = d.join("data");
    let hub = common::start_hub(&data);
    let cli = |args: &[&str]| certhub_at(d, &data, args).ok();
    enroll_widget(d, &data);
    let widget = d.join("pki/devices").join(WIDGET);
    let (chain, key) = (widget.join("chain.pem"), widget.join("key.pem"));
    let x509 = ["--cert", s(&chain), "--key", s(&key)];
    // A second device, whose paths the widget's tokens must not open.
    cli(&["device", "create", "--id", "other-device"]);

    let device = Uploader {
        hub: &hub,
        data: &data,
        x509: x509.to_vec(),
    };
    let begin = |name: &str| device.begin(name);
    let grant = |name: &str| device.grant(name);
    let put = |url: &str, body: &str| -> (u16, String) {
        curl_url(
            &data,
            url,
            &[
                "-X",
                "PUT",
                "-H",
                "x-ms-blob-type: BlockBlob",
                "--data-binary",
                body,
            ],
        )
    };
    let notify = |path_id: Option<&str>, body: serde_json::Value| -> (u16, String) {
        let mut args = x509.to_vec();
        let body = body.to_string();
        args.extend([
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "--data-binary",
        ]);
        args.push(&body);
        let path = match path_id {
            Some(id) => format!("/devices/{WIDGET}/files/notifications/{id}"),
            None => format!("/devices/{WIDGET}/files/notifications"),
        };
        curl(&hub, &data, &path, &args)
    };
    let blob_file = |name: &str| data.join("files/blobs").join(name);

    // Names that climb out of the device's folder or hide separators.
    for bad in ["../other-device/x", "a/../../x", "/abs", "a//b", "a\\b", ""] {
        let (code, body) = begin(bad);
        assert_eq!(code, 400, "{bad:?}: {body}");
        assert!(body.contains("blob name"), "{body}");
    }

    // A good grant: the token opens its own blob only.
    let g = grant("logs/a.txt");
    assert_eq!(g.blob_name, format!("{WIDGET}/logs/a.txt"));
    let port = hub.https_port();
    let base = format!("https://localhost:{port}/fileupload");
    let (code, body) = put(&format!("{base}/{WIDGET}/logs/b.txt{}", g.token), "x");
    assert_eq!(code, 403, "another blob path: {body}");
    assert!(body.contains("AuthenticationFailed"), "{body}");
    let (code, body) = put(&format!("{base}/other-device/logs/a.txt{}", g.token), "x");
    assert_eq!(code, 403, "another device's path: {body}");
    // Tampered: a later expiry, or a changed signature.
    let later = g.token.replace("&se=", "&se=2099-01-01T00%3A00%3A00Z&old=");
    let (code, body) = put(&format!("{base}/{}{later}", g.blob_name), "x");
    assert_eq!(code, 403, "a later expiry: {body}");
    let sig_at = g.token.find("sig=").expect("sig") + 4;
    let mut tampered = g.token.clone();
    let flipped = if &tampered[sig_at..=sig_at] == "A" {
        "B"
    } else {
        "A"
    };
    tampered.replace_range(sig_at..=sig_at, flipped);
    let (code, body) = put(&format!("{base}/{}{tampered}", g.blob_name), "x");
    assert_eq!(code, 403, "a changed signature: {body}");
    // No token at all.
    let (code, body) = put(&format!("{base}/{}", g.blob_name), "x");
    assert_eq!(code, 403, "{body}");
    // Encoded separators and dot segments in the blob path.
    for path in [
        format!("{WIDGET}/logs%2Fa.txt"),
        format!("{WIDGET}/logs%5Ca.txt"),
        format!("{WIDGET}/logs/../a.txt"),
    ] {
        let (code, body) = put(&format!("{base}/{path}{}", g.token), "x");
        assert_eq!(code, 400, "{path}: {body}");
    }
    assert!(!blob_file(&g.blob_name).exists(), "nothing was written");
    // Put Blob needs the blob type header.
    let (code, body) = curl_url(&data, &g.url, &["-X", "PUT", "--data-binary", "x"]);
    assert_eq!(code, 400, "{}: {body}", g.url);
    // The real write succeeds.
    let (code, body) = put(&g.url, "hello");
    assert_eq!(code, 201, "{body}");
    assert_eq!(
        std::fs::read(blob_file(&g.blob_name)).expect("stored"),
        b"hello"
    );

    // Reports: unknown correlation id, mismatched ids, then the real one, then again.
    let ok = serde_json::json!({"isSuccess": true, "statusCode": 201, "statusDescription": "ok"});
    let (code, body) = notify(Some("no-such-upload"), ok.clone());
    assert_eq!(code, 404, "{body}");
    let (code, body) = notify(
        Some(&g.correlation_id),
        serde_json::json!({"correlationId": "other", "isSuccess": true}),
    );
    assert_eq!(code, 400, "{body}");
    let (code, body) = notify(Some(&g.correlation_id), ok.clone());
    assert_eq!(code, 204, "{body}");
    let (code, body) = notify(
        None,
        serde_json::json!({"correlationId": g.correlation_id, "isSuccess": true}),
    );
    assert_eq!(code, 409, "reported twice: {body}");
    // A reported upload's token no longer writes.
    let (code, body) = put(&g.url, "overwrite");
    assert_eq!(code, 403, "{body}");
    assert_eq!(
        std::fs::read(blob_file(&g.blob_name)).expect("kept"),
        b"hello"
    );
    // Success reported for a blob never written is refused; the upload stays open.
    let never = grant("never.txt");
    let (code, body) = notify(Some(&never.correlation_id), ok.clone());
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("never written"), "{body}");

    // The settings: a size cap, a short token lifetime, two uploads at a time.
    cli(&[
        "hub",
        "set",
        "--file-upload-max-bytes",
        "1000",
        "--file-upload-sas-ttl-seconds",
        "3",
        "--file-upload-max-concurrent",
        "2",
    ]);
    let big = grant("big.bin");
    let (code, body) = put(&big.url, &"x".repeat(2000));
    assert_eq!(code, 413, "{body}");
    assert!(body.contains("RequestBodyTooLarge"), "{body}");
    // Chunked, without a length: refused as it streams.
    let (code, body) = curl_url(
        &data,
        &big.url,
        &[
            "-X",
            "PUT",
            "-H",
            "x-ms-blob-type: BlockBlob",
            "-H",
            "Transfer-Encoding: chunked",
            "--data-binary",
            &"y".repeat(5000),
        ],
    );
    assert_eq!(code, 413, "{body}");
    assert!(
        !blob_file(&big.blob_name).exists(),
        "nothing of it was stored"
    );
    let leftovers = files_under(&data.join("files"));
    assert!(
        leftovers
            .iter()
            .all(|f| !f.contains("/put-") && !f.contains('#')),
        "no part of the refused Put Blobs is left: {leftovers:?}"
    );
    // never.txt and big.bin are open: a third is refused.
    let (code, body) = begin("third.bin");
    assert_eq!(code, 403, "{body}");
    assert!(
        body.contains("DeviceMaximumActiveFileUploadLimitExceeded"),
        "{body}"
    );
    // After three seconds the token has expired.
    std::thread::sleep(std::time::Duration::from_millis(3500));
    let (code, body) = put(&big.url, "small");
    assert_eq!(code, 403, "expired: {body}");
    assert!(body.contains("expired"), "{body}");

    // A device disabled in the middle of a block upload: the block list is refused.
    cli(&["hub", "set", "--file-upload-sas-ttl-seconds", "3600"]);
    let m = grant("blocks.bin");
    let (code, body) = device.block(&m, "QUFB", "first ", &[]);
    assert_eq!(code, 201, "{body}");
    // A block list naming a block never put is refused, and publishes nothing.
    let (code, body) = device.list(&m, &["QUFB", "WFla"], &[]);
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("InvalidBlockList"), "{body}");
    assert!(!blob_file(&m.blob_name).exists());
    cli(&["device", "update", "--id", WIDGET, "--status", "disabled"]);
    let (code, body) = device.block(&m, "QkJC", "second", &[]);
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("disabled"), "{body}");
    let (code, body) = device.list(&m, &["QUFB"], &[]);
    assert_eq!(code, 403, "{body}");
    assert!(!blob_file(&m.blob_name).exists());
    // And the device itself is refused from then on.
    let (code, _) = begin("after.txt");
    assert_eq!(code, 401);
}

/// Block lists in any order compose the blob: blocks put one after the other (kept in one log
/// and published by a rename), out of order, put twice, left out, named twice, and put while
/// another block of the same blob is still streaming (staged apart); If-None-Match: * on the
/// list; the staging folder is gone once the blob is published.
#[test]
fn block_lists_in_any_order_compose_the_blob() {
    let t = tmp();
    let d = t.path();
    let data = d.join("data");
    let hub = common::start_hub(&data);
    enroll_widget(d, &data);
    let widget = d.join("pki/devices").join(WIDGET);
    let (chain, key) = (widget.join("chain.pem"), widget.join("key.pem"));
    let device = Uploader {
        hub: &hub,
        data: &data,
        x509: vec!["--cert", s(&chain), "--key", s(&key)],
    };
    let blob = |g: &Grant| {
        String::from_utf8(std::fs::read(data.join("files/blobs").join(&g.blob_name)).expect("blob"))
            .expect("utf-8")
    };
    let staging = data.join("files/staging");
    let staged_folders = || std::fs::read_dir(&staging).map_or(0, |d| d.count());
    // Block ids as the SDKs make them: base64 of equal-length names.
    let (a, b, c) = ("QUFB", "QkJC", "Q0ND");
    let put_all = |g: &Grant, blocks: &[(&str, &str)]| {
        for (id, body) in blocks {
            let (code, text) = device.block(g, id, body, &[]);
            assert_eq!(code, 201, "{id}: {text}");
        }
    };
    // (blob, blocks put in order, the list, the blob's bytes)
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a [&'a str], &'a str);
    let cases: [Case; 5] = [
        (
            "in-order.bin",
            &[(a, "one "), (b, "two "), (c, "three")],
            &[a, b, c],
            "one two three",
        ),
        (
            "shuffled.bin",
            &[(a, "one "), (b, "two "), (c, "three ")],
            &[c, a, b],
            "three one two ",
        ),
        (
            "put-twice.bin",
            &[(a, "one "), (b, "two"), (a, "ONE ")],
            &[a, b],
            "ONE two",
        ),
        (
            "left-out.bin",
            &[(a, "one "), (b, "two "), (c, "three")],
            &[a, c],
            "one three",
        ),
        (
            "named-twice.bin",
            &[(a, "one "), (b, "two ")],
            &[a, b, a],
            "one two one ",
        ),
    ];
    for (name, blocks, list, expected) in cases {
        let g = device.grant(name);
        put_all(&g, blocks);
        let (code, text) = device.list(&g, list, &[]);
        assert_eq!(code, 201, "{name}: {text}");
        assert_eq!(blob(&g), expected, "{name}");
    }
    assert_eq!(staged_folders(), 0, "every staging folder was removed");

    // A block put while another of the same blob streams is staged apart, and both compose.
    let g = device.grant("concurrent.bin");
    let slow_body = "s".repeat(60_000);
    let slow_url = format!("{}&comp=block&blockid={a}", g.url);
    let ca = data.join("tls/server-ca.pem");
    let slow = Command::new("curl")
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--cacert",
            s(&ca),
        ])
        .args([
            "--limit-rate",
            "20k",
            "-X",
            "PUT",
            "--data-binary",
            &slow_body,
            &slow_url,
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("curl runs");
    std::thread::sleep(std::time::Duration::from_millis(800));
    let (code, text) = device.block(&g, b, "fast", &[]);
    assert_eq!(code, 201, "{text}");
    let out = slow.wait_with_output().expect("curl ends");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "201");
    let (code, text) = device.list(&g, &[a, b], &[]);
    assert_eq!(code, 201, "{text}");
    assert_eq!(blob(&g), format!("{slow_body}fast"));

    // If-None-Match: * refuses to replace a blob; without it the blob is replaced.
    let g = device.grant("in-order.bin");
    put_all(&g, &[(a, "new")]);
    let (code, text) = device.list(&g, &[a], &["-H", "If-None-Match: *"]);
    assert_eq!(code, 409, "{text}");
    assert!(text.contains("BlobAlreadyExists"), "{text}");
    assert_eq!(blob(&g), "one two three");
    let (code, text) = device.list(&g, &[a], &[]);
    assert_eq!(code, 201, "{text}");
    assert_eq!(blob(&g), "new");
}

/// Staged blocks outlive a restart of the hub (the log and its index are on disk), and the
/// staging folders of uploads that can no longer be written (token run out) are removed by the
/// sweep the hub runs at start and every minute.
#[test]
fn staged_blocks_survive_a_restart_and_closed_uploads_are_swept() {
    let t = tmp();
    let d = t.path();
    let data = d.join("data");
    let hub = common::start_hub(&data);
    enroll_widget(d, &data);
    let widget = d.join("pki/devices").join(WIDGET);
    let (chain, key) = (widget.join("chain.pem"), widget.join("key.pem"));
    let x509 = vec!["--cert", s(&chain), "--key", s(&key)];
    let staging = data.join("files/staging");
    let staged_folders = || std::fs::read_dir(&staging).map_or(0, |d| d.count());
    let (a, b) = ("QUFB", "QkJC");

    let device = Uploader {
        hub: &hub,
        data: &data,
        x509: x509.clone(),
    };
    let kept = device.grant("kept.bin");
    let (code, text) = device.block(&kept, a, "before restart ", &[]);
    assert_eq!(code, 201, "{text}");
    certhub_at(
        d,
        &data,
        &["hub", "set", "--file-upload-sas-ttl-seconds", "3"],
    )
    .ok();
    let lapsed = device.grant("lapsed.bin");
    let (code, text) = device.block(&lapsed, a, "never listed", &[]);
    assert_eq!(code, 201, "{text}");
    assert_eq!(staged_folders(), 2);
    let old_host = format!("localhost:{}", hub.https_port());
    drop(device);
    drop(hub);
    // The lapsed upload's token (3 s) runs out.
    std::thread::sleep(std::time::Duration::from_millis(3200));

    let hub = common::start_hub(&data);
    let device = Uploader {
        hub: &hub,
        data: &data,
        x509,
    };
    // The sweep at start removed the lapsed upload's blocks and kept the open one's.
    let mut folders = staged_folders();
    for _ in 0..50 {
        if folders == 1 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        folders = staged_folders();
    }
    assert_eq!(folders, 1, "only the open upload's staging folder is left");
    let kept = Grant {
        url: kept
            .url
            .replace(&old_host, &format!("localhost:{}", hub.https_port())),
        ..kept
    };
    let (code, text) = device.block(&kept, b, "after restart", &[]);
    assert_eq!(code, 201, "{text}");
    let (code, text) = device.list(&kept, &[a, b], &[]);
    assert_eq!(code, 201, "{text}");
    let blob = std::fs::read(data.join("files/blobs").join(&kept.blob_name)).expect("blob");
    assert_eq!(blob, b"before restart after restart");
    assert_eq!(staged_folders(), 0);
}
