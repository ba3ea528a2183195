//! `scripts/test` runs every test binary, even after one failed, and ends with one line that
//! sums them up, exiting non-zero when anything failed. It runs here on a small workspace of
//! its own (no dependencies, its own target folder): a binary with a failing test, a passing
//! one after it, one that aborts, and a doc test.

mod common;

use std::path::Path;
use std::process::Command;

use common::{tmp, write};

const FILES: &[(&str, &str)] = &[
    (
        "Cargo.toml",
        "[workspace]\nmembers = [\"fixture\"]\nresolver = \"3\"\n",
    ),
    (
        "fixture/Cargo.toml",
        "[package]\nname = \"fixture\"\nversion = \"0.1.0\"\nedition = \"2024\"\n",
    ),
    (
        "fixture/src/lib.rs",
        "/// ```\n/// assert_eq!(fixture::two(), 2);\n/// ```\npub fn two() -> u32 {\n    2\n}\n",
    ),
    (
        "fixture/tests/a_fails.rs",
        "#[test]\nfn passes() {}\n#[test]\nfn fails() {\n    panic!(\"on purpose\");\n}\n",
    ),
    (
        "fixture/tests/b_passes.rs",
        "#[test]\nfn one() {}\n#[test]\nfn two() {}\n",
    ),
    (
        "fixture/tests/c_aborts.rs",
        "#[test]\nfn aborts() {\n    std::process::abort();\n}\n",
    ),
];

/// Runs the repository's scripts/test, copied into the fixture workspace `dir`: its exit code,
/// everything it printed, and the last line of its standard output.
fn scripts_test(dir: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(dir.join("scripts/test"))
        .args(args)
        .current_dir(dir)
        .env("CARGO_TARGET_DIR", dir.join("target"))
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("scripts/test runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or_default().to_string();
    // Indented, so that a failure message quoting it cannot add `test result:` lines to the
    // summary of the scripts/test that runs this test.
    let text = format!("{stdout}{}", String::from_utf8_lossy(&out.stderr))
        .lines()
        .map(|l| format!("  | {l}\n"))
        .collect();
    (out.status.code(), text, last)
}

#[test]
fn every_test_binary_runs_and_one_line_sums_them_up() {
    let t = tmp();
    let d = t.path();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    for (path, text) in FILES {
        std::fs::create_dir_all(d.join(path).parent().expect("a folder")).expect("mkdir");
        write(&d.join(path), text);
    }
    // What scripts/test checks before the tests: the Python clients are installed...
    let requirements = common::read(&repo.join("tests/interop/requirements.txt"));
    std::fs::create_dir_all(d.join("tests/interop")).expect("mkdir");
    write(&d.join("tests/interop/requirements.txt"), &requirements);
    std::fs::create_dir_all(d.join(".venv/bin")).expect("mkdir");
    write(&d.join(".venv/.installed"), &requirements);
    // ... and so are the Node.js ones.
    let node_lock = common::read(&repo.join("tests/interop/node/package-lock.json"));
    std::fs::create_dir_all(d.join("tests/interop/node/node_modules")).expect("mkdir");
    write(&d.join("tests/interop/node/package-lock.json"), &node_lock);
    write(
        &d.join("tests/interop/node/node_modules/.installed-lock.json"),
        &node_lock,
    );
    // Azurite's packages, installed as scripts/test expects (so it installs nothing).
    let azurite_lock = common::read(&repo.join("tests/interop/azurite/package-lock.json"));
    std::fs::create_dir_all(d.join("tests/interop/azurite/node_modules")).expect("mkdir");
    write(
        &d.join("tests/interop/azurite/package-lock.json"),
        &azurite_lock,
    );
    write(
        &d.join("tests/interop/azurite/node_modules/.installed-lock.json"),
        &azurite_lock,
    );
    std::fs::create_dir_all(d.join("scripts")).expect("mkdir");
    for (from, to) in [
        (repo.join("scripts/test"), d.join("scripts/test")),
        (
            std::path::PathBuf::from("/bin/true"),
            d.join(".venv/bin/python"),
        ),
    ] {
        std::fs::copy(&from, &to).unwrap_or_else(|e| panic!("{}: {e}", from.display()));
    }
    let lock = Command::new("cargo")
        .args(["generate-lockfile", "--offline"])
        .current_dir(d)
        .output()
        .expect("cargo runs");
    assert!(lock.status.success(), "{lock:?}");

    let (code, out, last) = scripts_test(d, &[]);
    assert_eq!(code, Some(101), "{out}");
    // The binary after the failing one ran, and so did the doc tests.
    for ran in [
        "test fails ... FAILED",
        "test one ... ok",
        "test two ... ok",
        "Running tests/c_aborts.rs",
        "test fixture/src/lib.rs - two (line 1) ... ok",
    ] {
        assert!(out.contains(ran), "{ran:?} not in\n{out}");
    }
    assert_eq!(
        last, "4 passed, 1 failed, 1 test binary stopped before its summary (see above)",
        "{out}"
    );

    let (code, out, last) = scripts_test(d, &["--test", "b_passes"]);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(last, "2 passed, 0 failed", "{out}");

    // A build that fails says so on the same line.
    write(&d.join("fixture/tests/b_passes.rs"), "fn broken( {}\n");
    let (code, out, last) = scripts_test(d, &[]);
    assert_ne!(code, Some(0), "{out}");
    assert_eq!(
        last, "0 passed, 0 failed, the build failed (see above)",
        "{out}"
    );
}
