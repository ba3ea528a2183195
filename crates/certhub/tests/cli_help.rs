//! Every command's `--help`: each option says what it is for, and no default is printed twice
//! (once by clap, once in the text). Walks every subcommand `certhub --help` lists.

use std::process::Command;

fn help(path: &[String]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_certhub"))
        .args(path)
        .arg("--help")
        .output()
        .expect("certhub runs");
    assert!(
        out.status.success(),
        "certhub {} --help failed",
        path.join(" ")
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The names listed under `Commands:`.
fn subcommands(text: &str) -> Vec<String> {
    text.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_string)
        .collect()
}

/// The problems of one command's options: those without a text, and doubled defaults.
fn problems(path: &[String], text: &str) -> Vec<String> {
    let lines: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.starts_with("Options:"))
        .skip(1)
        .take_while(|l| !l.is_empty() && l.starts_with(' '))
        .collect();
    let mut found = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i].trim_start();
        // An option: its flags, then its text on the same line (after two spaces) or on the
        // lines below, indented further.
        let mut entry = line.to_string();
        let mut j = i + 1;
        while j < lines.len() && !lines[j].trim_start().starts_with('-') {
            entry.push(' ');
            entry.push_str(lines[j].trim());
            j += 1;
        }
        let flags_end = line.find("  ").unwrap_or(line.len());
        let has_text = !line[flags_end..].trim().is_empty() || j > i + 1;
        let name = line[..flags_end].trim().to_string();
        if !has_text && !name.starts_with("-h, --help") && !name.starts_with("-V, --version") {
            found.push(format!("certhub {} {name}: no help text", path.join(" ")));
        }
        if entry.matches("[default:").count() > 1 {
            found.push(format!(
                "certhub {} {name}: default given twice: {entry}",
                path.join(" ")
            ));
        }
        i = j;
    }
    found
}

#[test]
fn every_option_of_every_command_has_a_help_text_and_one_default() {
    let mut stack: Vec<Vec<String>> = vec![Vec::new()];
    let mut all = Vec::new();
    let mut commands = 0;
    while let Some(path) = stack.pop() {
        let text = help(&path);
        commands += 1;
        all.extend(problems(&path, &text));
        for sub in subcommands(&text) {
            let mut p = path.clone();
            p.push(sub);
            stack.push(p);
        }
    }
    assert!(commands > 50, "only {commands} commands walked");
    assert!(
        all.is_empty(),
        "{} problems:\n{}",
        all.len(),
        all.join("\n")
    );
}
