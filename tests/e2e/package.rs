//! The Debian package, as a DBA uses it (run by scripts/package_test.sh, which builds it with
//! scripts/package.sh): `apt-get install ./….deb` on this machine's PostgreSQL 15 with nothing of
//! pg_token_cleanup installed before, a cluster started with the library preloaded, the extension
//! created and a rule run by the worker; then `apt-get remove`, which must leave none of its files.

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
    for expected in [
        "/usr/lib/postgresql/15/lib/pg_token_cleanup.so".to_string(),
        "/usr/share/postgresql/15/extension/pg_token_cleanup.control".to_string(),
        format!("/usr/share/postgresql/15/extension/pg_token_cleanup--{version}.sql"),
        "/usr/share/postgresql/15/extension/pg_token_cleanup--0.1.0.sql".to_string(),
        "/usr/share/postgresql/15/extension/pg_token_cleanup--0.1.0--0.2.0.sql".to_string(),
        "/usr/share/postgresql/15/extension/pg_token_cleanup--0.2.0.sql".to_string(),
        "/usr/share/postgresql/15/extension/pg_token_cleanup--0.2.0--0.3.0.sql".to_string(),
        "/usr/share/postgresql/15/extension/pg_token_cleanup--0.3.0.sql".to_string(),
        "/usr/share/postgresql/15/extension/pg_token_cleanup--0.3.0--0.4.0.sql".to_string(),
        "/usr/share/postgresql/15/extension/pg_token_cleanup--0.4.0.sql".to_string(),
        "/usr/share/postgresql/15/extension/pg_token_cleanup--0.4.0--0.5.0.sql".to_string(),
        "/usr/share/postgresql/15/extension/pg_token_cleanup--0.5.0.sql".to_string(),
        "/usr/share/postgresql/15/extension/pg_token_cleanup--0.5.0--0.6.0.sql".to_string(),
        "/usr/share/postgresql/15/extension/pg_token_cleanup--0.6.0.sql".to_string(),
        "/usr/share/postgresql/15/extension/pg_token_cleanup--0.6.0--0.7.0.sql".to_string(),
    ] {
        assert!(
            listed.lines().any(|l| l == expected),
            "{expected} not in:\n{listed}"
        );
    }

    {
        let cluster = Cluster::start("package", &[]);
        let mut db = cluster.database_with_extension("app");
        let installed: String = db
            .query_one(
                "SELECT extversion FROM pg_extension WHERE extname = 'pg_token_cleanup'",
                &[],
            )
            .unwrap()
            .get(0);
        assert_eq!(installed, version);
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
