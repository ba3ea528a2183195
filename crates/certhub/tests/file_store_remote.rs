//! Uploaded files in a remote object store instead of the data directory: a real S3 server
//! (moto's, from PyPI, pinned in tests/interop/requirements.txt) and Azurite (Microsoft's Azure
//! Storage emulator, from npm, pinned in tests/interop/azurite) on loopback, the hub configured
//! with `file_store = "s3://bucket/prefix"` or `"az://container/prefix"` and its options, and
//! the same Azure SDK uploads as tests/interop/upload.py makes (Put Blob and blocks, read back
//! through the hub); the objects are then looked up in the store itself. And the configuration
//! mistakes the hub refuses before it starts.

mod common;

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use common::{python, tmp};

const HOST: &str = "127.0.0.10";

/// A store server under test (moto's S3, Azurite), stopped when dropped.
struct Listening {
    child: Child,
    /// `http://host:port`.
    url: String,
}

impl Drop for Listening {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free port of `host` (neither server takes port 0).
fn free_port(host: &str) -> u16 {
    TcpListener::bind((host, 0))
        .expect("a free port")
        .local_addr()
        .expect("addr")
        .port()
}

/// Starts `command` and waits (up to 20 s) until it accepts connections on `host:port`.
fn listening(mut command: Command, host: &str, port: u16) -> Listening {
    let server = Listening {
        child: command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{command:?} starts: {e}")),
        url: format!("http://{host}:{port}"),
    };
    for _ in 0..400 {
        if std::net::TcpStream::connect((host, port)).is_ok() {
            return server;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("{command:?} did not listen on {}", server.url);
}

fn s3_server() -> Listening {
    let moto = python().with_file_name("moto_server");
    assert!(
        moto.exists(),
        "{} is missing: run scripts/test, which installs tests/interop/requirements.txt (moto[server]) into .venv",
        moto.display()
    );
    let port = free_port(HOST);
    let mut command = Command::new(&moto);
    command.args(["-H", HOST, "-p", &port.to_string()]);
    listening(command, HOST, port)
}

fn curl(args: &[&str]) -> String {
    let out = Command::new("curl")
        .args(["-sS", "--fail"])
        .args(args)
        .output()
        .expect("curl runs");
    assert!(
        out.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[test]
fn uploads_go_to_an_s3_bucket() {
    let s3 = s3_server();
    curl(&["-X", "PUT", &format!("{}/certhub-files", s3.url)]);
    let t = tmp();
    let d = t.path();
    let config = d.join("hub.toml");
    std::fs::write(
        &config,
        format!(
            r#"file_store = "s3://certhub-files/hub-a"
dangerous_file_store_allow_http = true

[file_store_options]
aws_endpoint = "{}"
aws_region = "us-east-1"
aws_access_key_id = "test"
aws_secret_access_key = "test"
"#,
            s3.url
        ),
    )
    .expect("config written");
    let _hub = common::hub_after_python_uploads(d, HOST, &["--config", common::s(&config)]);
    let data = d.join("data");
    // The files are in the bucket, under the configured prefix, and not in the data directory.
    let listing = curl(&[&format!(
        "{}/certhub-files?list-type=2&prefix=hub-a/blobs/",
        s3.url
    )]);
    for key in [
        "hub-a/blobs/smart-x-widget-0001/dumps/core.bin",
        "hub-a/blobs/smart-x-widget-0001/reports/today.csv",
        "hub-a/blobs/uploader-sas/log.txt",
    ] {
        assert!(listing.contains(key), "{key} not in the bucket:\n{listing}");
    }
    assert!(
        listing.contains("<Size>5243003</Size>"),
        "the block upload's size:\n{listing}"
    );
    let core = curl(&[&format!(
        "{}/certhub-files/hub-a/blobs/smart-x-widget-0001/reports/today.csv",
        s3.url
    )]);
    assert_eq!(core, "again");
    assert!(!data.join("files/blobs").exists());
}

#[test]
fn file_store_mistakes_are_refused_before_the_hub_starts() {
    let t = tmp();
    let d = t.path();
    let cases = [
        (
            "file_store = \"ftp://x/y\"\n",
            "is not a store certhub can use",
        ),
        (
            "file_store = \"s3://b\"\n[file_store_options]\naws_endpint = \"http://x\"\n",
            "\"aws_endpint\" is not an option of this store",
        ),
        (
            "file_store = \"s3://b\"\n[file_store_options]\naws_allow_http = \"true\"\n",
            "dangerous_file_store_allow_http",
        ),
        (
            "[file_store_options]\naws_region = \"x\"\n",
            "given without file_store",
        ),
        (
            "file_store = \"file://nas/files\"\n",
            "a directory is file:///absolute/path (no host)",
        ),
        (
            "file_store = \"file:///srv/files\"\n[file_store_options]\naws_region = \"x\"\n",
            "a directory (file:///srv/files) takes no options",
        ),
    ];
    for (i, (toml, want)) in cases.iter().enumerate() {
        let config = d.join(format!("c{i}.toml"));
        std::fs::write(&config, toml).expect("config");
        let out = Command::new(env!("CARGO_BIN_EXE_certhub"))
            .args([
                "serve",
                "--config",
                common::s(&config),
                "--data-dir",
                common::s(&d.join(format!("data{i}"))),
                "--https-addr",
                &format!("{HOST}:0"),
                "--mqtt-addr",
                &format!("{HOST}:0"),
                "--amqp-addr",
                &format!("{HOST}:0"),
            ])
            .output()
            .expect("certhub runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{toml}: {stderr}");
        assert!(stderr.contains(want), "{toml}: no {want:?} in {stderr}");
    }
}

/// Azurite's blob service and the folder it keeps its data in.
struct Azurite {
    /// Kept for its Drop: the server stops with the test.
    _server: Listening,
    /// `http://host:port/devstoreaccount1`, the account's endpoint.
    endpoint: String,
    _dir: tempfile::TempDir,
}

/// Azurite's well-known development account (the same in every copy of it).
const AZURITE_ACCOUNT: &str = "devstoreaccount1";
const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
const AZURITE_HOST: &str = "127.0.0.12";

fn azurite() -> Azurite {
    let bin = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/interop/azurite/node_modules/.bin/azurite-blob");
    assert!(
        bin.exists(),
        "{} is missing: run scripts/test, which installs tests/interop/azurite (npm ci)",
        bin.display()
    );
    let port = free_port(AZURITE_HOST);
    let dir = tmp();
    let mut command = Command::new(&bin);
    command.args([
        "--blobHost",
        AZURITE_HOST,
        "--blobPort",
        &port.to_string(),
        "--location",
        common::s(dir.path()),
        "--skipApiVersionCheck",
        "--loose",
        "--silent",
    ]);
    let server = listening(command, AZURITE_HOST, port);
    Azurite {
        endpoint: format!("{}/{AZURITE_ACCOUNT}", server.url),
        _server: server,
        _dir: dir,
    }
}

/// Runs Python with azure-storage-blob against Azurite: `script` sees `svc`, a
/// BlobServiceClient for the account; returns what it printed.
fn azure_python(endpoint: &str, script: &str) -> String {
    let cs = format!(
        "DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};BlobEndpoint={endpoint};"
    );
    let program = format!(
        "from azure.storage.blob import BlobServiceClient\nsvc = BlobServiceClient.from_connection_string({cs:?})\n{script}"
    );
    let out = Command::new(python())
        .args(["-c", &program])
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[test]
fn uploads_go_to_azure_blob_storage() {
    let az = azurite();
    azure_python(&az.endpoint, "svc.create_container('certhub')");
    let t = tmp();
    let d = t.path();
    let config = d.join("hub.toml");
    std::fs::write(
        &config,
        format!(
            r#"file_store = "az://certhub/hub-b"
dangerous_file_store_allow_http = true

[file_store_options]
azure_storage_account_name = "{AZURITE_ACCOUNT}"
azure_storage_account_key = "{AZURITE_KEY}"
azure_storage_endpoint = "{}"
"#,
            az.endpoint
        ),
    )
    .expect("config written");
    let _hub = common::hub_after_python_uploads(d, AZURITE_HOST, &["--config", common::s(&config)]);
    // The blobs are in the container, under the prefix, with their sizes.
    let listing = azure_python(
        &az.endpoint,
        "for b in svc.get_container_client('certhub').list_blobs(name_starts_with='hub-b/blobs/'):\n    print(b.name, b.size)",
    );
    for line in [
        "hub-b/blobs/smart-x-widget-0001/dumps/core.bin 5243003",
        "hub-b/blobs/smart-x-widget-0001/reports/today.csv 5",
        "hub-b/blobs/uploader-sas/log.txt 20",
    ] {
        assert!(
            listing.lines().any(|l| l == line),
            "{line} not in the container:\n{listing}"
        );
    }
    assert!(!d.join("data/files/blobs").exists());
}
