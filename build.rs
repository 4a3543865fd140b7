//! Build script: brings uPlot, the chart library of the demo page, from npm
//! and hands its two files to `src/http/demo.rs`, which compiles them into
//! the binary so that the page works without internet access.
//!
//! The version is pinned by `web/package.json` and `web/package-lock.json`;
//! no third-party code is kept in the repository. When
//! `web/node_modules/uplot/dist` is missing (a fresh clone) or holds another
//! version than the lock file, this runs `npm ci` in `web/`, which needs
//! Node.js/npm and access to the npm registry. The files, and uPlot's license
//! (MIT: the binary carries a copy), are then copied into `OUT_DIR`.

use std::env;
use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The files of the `uplot` package the binary serves: (path in the
/// package, name in `OUT_DIR`).
const FILES: [(&str, &str); 3] = [
    ("dist/uPlot.iife.min.js", "uPlot.iife.min.js"),
    ("dist/uPlot.min.css", "uPlot.min.css"),
    ("LICENSE", "uPlot.LICENSE.txt"),
];

fn main() {
    let root = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets it"));
    let web = root.join("web");
    let package = web.join("node_modules/uplot");

    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=web/package.json");
    println!("cargo:rerun-if-changed=web/package-lock.json");
    println!("cargo:rerun-if-changed=web/node_modules/uplot/package.json");
    for (file, _) in FILES {
        println!("cargo:rerun-if-changed=web/node_modules/uplot/{file}");
    }
    println!("cargo:rerun-if-env-changed=NPM");

    if !installed(&web, &package) {
        npm_ci(&web);
        if !installed(&web, &package) {
            fail(&format!(
                "`npm ci` in {} did not install uPlot as web/package-lock.json pins it \
                 (looked for {})",
                web.display(),
                package.display()
            ));
        }
    }
    for (file, name) in FILES {
        if let Err(error) = copy_if_changed(&package.join(file), &out.join(name)) {
            fail(&format!("cannot copy uplot/{file} into OUT_DIR: {error}"));
        }
    }
}

/// Copies only changed contents: an unchanged file keeps its time, so the
/// crate is not recompiled for nothing when this script reruns.
fn copy_if_changed(from: &Path, to: &Path) -> std::io::Result<()> {
    let bytes = fs::read(from)?;
    if fs::read(to).is_ok_and(|old| old == bytes) {
        return Ok(());
    }
    fs::write(to, bytes)
}

/// Whether `node_modules` holds uPlot's files, at the version the lock file
/// pins.
fn installed(web: &Path, package: &Path) -> bool {
    if !FILES.iter().all(|(file, _)| package.join(file).is_file()) {
        return false;
    }
    let locked = fs::read_to_string(web.join("package-lock.json"))
        .ok()
        .and_then(|lock| version_after(&lock, "\"node_modules/uplot\""));
    let present = fs::read_to_string(package.join("package.json"))
        .ok()
        .and_then(|manifest| version_after(&manifest, "{"));
    match (locked, present) {
        (Some(locked), Some(present)) => locked == present,
        // The lock file is not ours to interpret further: files are there.
        _ => true,
    }
}

/// The value of the first `"version": "…"` after `anchor` in a JSON text.
fn version_after(text: &str, anchor: &str) -> Option<String> {
    let rest = &text[text.find(anchor)? + anchor.len()..];
    let rest = &rest[rest.find("\"version\"")? + "\"version\"".len()..];
    let rest = rest.trim_start().strip_prefix(':')?.trim_start();
    let rest = rest.strip_prefix('"')?;
    Some(rest[..rest.find('"')?].to_string())
}

fn npm_ci(web: &Path) {
    let npm = env::var("NPM").unwrap_or_else(|_| "npm".into());
    eprintln!("running `{npm} ci` in {} to fetch uPlot", web.display());
    // npm's own output goes to stderr: cargo reads this script's stdout.
    let status = Command::new(&npm)
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(web)
        .stdin(Stdio::null())
        .stdout(std::io::stderr())
        .status();
    match status {
        Ok(status) if status.success() => {}
        Ok(status) => fail(&format!(
            "`{npm} ci` in {} failed ({status}). The demo page needs uPlot from the npm \
             registry on the first build: check access to it, then build again.",
            web.display()
        )),
        Err(error) if error.kind() == ErrorKind::NotFound => fail(&format!(
            "`{npm}` was not found. Building Sluice needs Node.js and npm to fetch uPlot \
             for the demo page (web/package.json): install them (Debian: \
             `apt-get install nodejs npm`) and build again, or set NPM to npm's path."
        )),
        Err(error) => fail(&format!("cannot run `{npm}`: {error}")),
    }
}

fn fail(message: &str) -> ! {
    eprintln!("error: {message}");
    std::process::exit(1);
}
