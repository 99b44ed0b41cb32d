//! The Debian package, as a DBA uses it (run by scripts/package_test.sh, which builds it with
//! scripts/package.sh): `apt-get install ./….deb` on this machine's PostgreSQL 15 with nothing of
//! pg_token_cleanup installed before, a cluster started with the library preloaded, the extension
//! created and a rule run by the worker; then `apt-get remove`, which must leave none of its files.
//! The packages for PostgreSQL 14, 16, 17 and 18 (which Debian bookworm does not carry) are
//! unpacked into that version's test server instead, and checked the same way.

use crate::common::{count, wait_for_count, Cluster};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const PACKAGE: &str = "postgresql-15-pg-token-cleanup";

fn sh(what: &str, command: &mut Command) -> String {
    let output = command.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        output.status.success(),
        "{what} failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// What the package for PostgreSQL `major` must hold: the library, the control file, this version's
/// install script, and every frozen install script and upgrade script in sql/.
fn packaged_files(major: u32) -> Vec<String> {
    let version = env!("CARGO_PKG_VERSION");
    let extension = format!("/usr/share/postgresql/{major}/extension");
    let mut files = vec![
        format!("/usr/lib/postgresql/{major}/lib/pg_token_cleanup.so"),
        format!("{extension}/pg_token_cleanup.control"),
        format!("{extension}/pg_token_cleanup--{version}.sql"),
    ];
    for entry in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/sql")).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if name.starts_with("pg_token_cleanup--") {
            files.push(format!("{extension}/{name}"));
        }
    }
    files
}

/// The extension's version in the database `client` is connected to.
fn extversion(client: &mut postgres::Client) -> String {
    client
        .query_one(
            "SELECT extversion FROM pg_extension WHERE extname = 'pg_token_cleanup'",
            &[],
        )
        .unwrap()
        .get(0)
}

/// Every pg_token_cleanup file in the server's library and extension directories.
fn installed_files() -> Vec<PathBuf> {
    [
        "/usr/lib/postgresql/15/lib",
        "/usr/share/postgresql/15/extension",
    ]
    .iter()
    .flat_map(|dir| std::fs::read_dir(dir).unwrap())
    .map(|e| e.unwrap().path())
    .filter(|p| {
        p.file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("pg_token_cleanup")
    })
    .collect()
}

#[test]
#[ignore = "installs a package system-wide: run with bash scripts/package_test.sh"]
fn the_deb_installs_runs_a_rule_and_removes_cleanly() {
    let deb = PathBuf::from(std::env::var("DEB").expect("DEB: the package to test"));
    assert!(deb.exists(), "{}", deb.display());
    let version = env!("CARGO_PKG_VERSION");
    assert!(
        deb.file_name()
            .unwrap()
            .to_string_lossy()
            .ends_with(&format!("_{version}_amd64.deb")),
        "{}",
        deb.display()
    );
    let fields = sh(
        "dpkg-deb --field",
        Command::new("dpkg-deb").arg("--field").arg(&deb),
    );
    assert!(
        fields.contains(&format!("Package: {PACKAGE}\n")),
        "{fields}"
    );
    assert!(fields.contains("Depends: postgresql-15"), "{fields}");

    // Nothing of ours before: whatever works below comes from the package.
    for file in installed_files() {
        std::fs::remove_file(&file).unwrap();
    }
    sh(
        "apt-get install",
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .arg(Path::new(".").join(&deb).canonicalize().unwrap())
            .env("DEBIAN_FRONTEND", "noninteractive"),
    );
    let listed = sh("dpkg -L", Command::new("dpkg").args(["-L", PACKAGE]));
    for expected in packaged_files(15) {
        assert!(
            listed.lines().any(|l| l == expected),
            "{expected} not in:\n{listed}"
        );
    }

    {
        let cluster = Cluster::start("package", &[]);
        let mut db = cluster.database_with_extension("app");
        assert_eq!(extversion(&mut db), version);
        crate::common::expiring_tokens(&mut db, "public.tokens", 100, 20);
        crate::common::add_rule(
            &mut db,
            "tokens",
            "public.tokens",
            "expires_at < now()",
            "* * * * * *",
            None,
        );
        wait_for_count(
            &mut db,
            "the packaged worker to purge",
            "SELECT count(*) FROM public.tokens",
            20,
            Duration::from_secs(30),
        );
        assert_eq!(
            count(
                &mut db,
                "SELECT count(*) FROM token_cleanup.runs WHERE status = 'succeeded' AND rows_deleted = 100"
            ),
            1
        );
    }

    sh(
        "apt-get remove",
        Command::new("apt-get")
            .args(["remove", "-y", "-q", PACKAGE])
            .env("DEBIAN_FRONTEND", "noninteractive"),
    );
    assert_eq!(installed_files(), Vec::<PathBuf>::new());
    let status = Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", PACKAGE])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&status.stdout).contains("install ok installed"),
        "still installed"
    );
}

#[test]
#[ignore = "copies a package into a test server: run with bash scripts/package_test.sh"]
fn a_package_unpacked_into_its_version_s_server_installs_runs_and_updates() {
    let deb = PathBuf::from(std::env::var("DEB").expect("DEB: the package to test"));
    let major = crate::common::server_major();
    let version = env!("CARGO_PKG_VERSION");
    let name = format!("postgresql-{major}-pg-token-cleanup");
    assert_eq!(
        deb.file_name().unwrap().to_string_lossy(),
        format!("{name}_{version}_amd64.deb")
    );
    let fields = sh(
        "dpkg-deb --field",
        Command::new("dpkg-deb").arg("--field").arg(&deb),
    );
    assert!(fields.contains(&format!("Package: {name}\n")), "{fields}");
    assert!(
        fields.contains(&format!("Depends: postgresql-{major}, libc6")),
        "{fields}"
    );

    // The package's files, exactly: PGDG's layout for this version.
    let unpacked = std::env::temp_dir().join(format!("pg_token_cleanup_deb_{major}"));
    let _ = std::fs::remove_dir_all(&unpacked);
    sh(
        "dpkg-deb -x",
        Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked),
    );
    let listed = sh("dpkg-deb -c", Command::new("dpkg-deb").arg("-c").arg(&deb));
    let mut files: Vec<String> = listed
        .lines()
        .filter_map(|l| l.split_whitespace().last())
        .filter(|p| !p.ends_with('/'))
        .map(|p| p.trim_start_matches('.').to_string())
        .collect();
    files.sort();
    let mut expected = packaged_files(major);
    expected.sort();
    assert_eq!(files, expected);

    // Into the test server, with nothing of ours there before: what works comes from the package.
    let server = crate::common::pg_bin().join("..");
    let lib = server.join("lib/postgresql");
    let extension = server.join("share/postgresql/extension");
    for dir in [&lib, &extension] {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path
                .file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("pg_token_cleanup")
            {
                std::fs::remove_file(path).unwrap();
            }
        }
    }
    for file in &files {
        let from = unpacked.join(file.trim_start_matches('/'));
        let to = if file.contains("/lib/") {
            &lib
        } else {
            &extension
        };
        std::fs::copy(&from, to.join(from.file_name().unwrap())).unwrap();
    }

    let cluster = Cluster::start("package_unpacked", &[]);
    let mut db = cluster.database_with_extension("app");
    assert_eq!(extversion(&mut db), version);
    crate::common::expiring_tokens(&mut db, "public.tokens", 100, 20);
    db.batch_execute(
        "SELECT token_cleanup.expire('public.tokens', 'expires_at', schedule => '* * * * * *')",
    )
    .unwrap();
    wait_for_count(
        &mut db,
        "the packaged worker to purge",
        "SELECT count(*) FROM public.tokens",
        20,
        Duration::from_secs(30),
    );
    // The upgrade scripts work on this version: the last release, updated.
    let mut old = {
        cluster
            .connect("postgres")
            .batch_execute("CREATE DATABASE old")
            .unwrap();
        cluster.connect("old")
    };
    old.batch_execute("CREATE EXTENSION pg_token_cleanup VERSION '0.7.0'; ALTER EXTENSION pg_token_cleanup UPDATE")
        .unwrap();
    assert_eq!(extversion(&mut old), version);
    // The update brought this version's SQL functions.
    assert_eq!(
        count(
            &mut old,
            "SELECT jsonb_array_length(token_cleanup.export_rules())::int8"
        ),
        0
    );
}

/// META.json, the PGXN source distribution's metadata: the fields PGXN's Meta Spec 1.0.0 requires,
/// and this version.
#[test]
fn pgxn_meta_json_names_this_version() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/META.json")).unwrap();
    let meta: serde_json::Value = serde_json::from_str(&text).expect("META.json is JSON");
    for field in [
        "name",
        "abstract",
        "version",
        "maintainer",
        "license",
        "provides",
        "meta-spec",
    ] {
        assert!(meta.get(field).is_some(), "META.json lacks {field}");
    }
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(meta["name"], "pg_token_cleanup");
    assert_eq!(meta["version"], version);
    assert_eq!(meta["provides"]["pg_token_cleanup"]["version"], version);
    assert_eq!(meta["meta-spec"]["version"], "1.0.0");
    let file = meta["provides"]["pg_token_cleanup"]["file"]
        .as_str()
        .unwrap();
    assert!(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(file)
            .exists(),
        "{file}"
    );
}
