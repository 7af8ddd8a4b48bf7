//! The daemon's state in SQLite (`$KILN_HOME/kiln.db`): sandboxes (with the name that created
//! each), templates, snapshots, API tokens (hashed, with their scopes; see [`crate::tokens`]),
//! the CI runs whose outputs the daemon keeps, and an audit log of events. It is what survives
//! a crash of the daemon. Databases of an earlier kiln are migrated when opened.

use std::path::Path;
use std::sync::Mutex;

use kiln_api::SandboxInfo;
use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};

use crate::lifecycle::State;

/// Failure of the state store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite failed.
    #[error("state database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The database file could not be created owner-only.
    #[error("state database {path}: {source}")]
    File {
        /// Which file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

type Result<T> = std::result::Result<T, StoreError>;

/// A sandbox as recorded: what the API shows of it, where its VM is on the host, and who
/// created it. Its row in `sandboxes` has one column per field of these.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxRecord {
    /// What the API shows.
    #[serde(flatten)]
    pub info: SandboxInfo,
    /// Run folder on the host.
    pub run_dir: String,
    /// Process id of its VMM.
    pub vmm_pid: u32,
    /// The principal that created it (a token's name, or `local`): only it, and admins, see it.
    pub owner: String,
}

/// A CI run whose outputs the daemon keeps (in `$KILN_HOME/ci-runs/<id>/`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CiRunRecord {
    /// Its id (`ci-` and 12 hex digits).
    pub id: String,
    /// The principal that started it: only it, and admins, may read its files.
    pub owner: String,
    /// Unix seconds.
    pub started_at: i64,
}

/// One audit event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Unix seconds.
    pub at: i64,
    /// Sandbox id, if about one.
    pub sandbox: Option<String>,
    /// created, exec, exited, reaped, killed, failed, forked, lost, ...
    pub kind: String,
    /// Free text (exit codes, reasons).
    pub detail: String,
    /// Who asked: a token name, "local" for the unix socket, or "kiln" for the daemon itself.
    pub actor: String,
}

/// The store.
#[derive(Debug)]
pub struct Store {
    pub(crate) db: Mutex<Connection>,
}

const SCHEMA: &str = "
PRAGMA journal_mode = WAL;
PRAGMA synchronous = NORMAL;
CREATE TABLE IF NOT EXISTS sandboxes (
    id TEXT PRIMARY KEY, template TEXT NOT NULL, state TEXT NOT NULL, created_at INTEGER NOT NULL,
    deadline INTEGER NOT NULL, cpus INTEGER NOT NULL, memory_mib INTEGER NOT NULL, mode TEXT NOT NULL,
    parent TEXT, run_dir TEXT NOT NULL, vmm_pid INTEGER NOT NULL, updated_at INTEGER NOT NULL,
    owner TEXT NOT NULL DEFAULT 'local');
CREATE TABLE IF NOT EXISTS templates (
    name TEXT PRIMARY KEY, digest TEXT NOT NULL, size_bytes INTEGER NOT NULL, built_at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS snapshots (
    name TEXT PRIMARY KEY, template TEXT NOT NULL, created_at INTEGER NOT NULL, bake_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS tokens (
    name TEXT PRIMARY KEY, sha256 TEXT NOT NULL UNIQUE, created_at INTEGER NOT NULL,
    scope TEXT NOT NULL DEFAULT 'untrusted');
CREATE TABLE IF NOT EXISTS ci_runs (
    id TEXT PRIMARY KEY, owner TEXT NOT NULL, started_at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT, at INTEGER NOT NULL, sandbox TEXT, kind TEXT NOT NULL,
    detail TEXT NOT NULL, actor TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS events_sandbox ON events(sandbox);
";

/// Columns an earlier kiln's tables lack, added when a database is opened: (table, column,
/// its definition). A token made before scopes existed becomes `untrusted`; a sandbox recorded
/// before owners existed belongs to whoever its `created` event names (else `local`).
const ADDED_COLUMNS: [(&str, &str, &str); 2] = [
    ("tokens", "scope", "TEXT NOT NULL DEFAULT 'untrusted'"),
    ("sandboxes", "owner", "TEXT NOT NULL DEFAULT 'local'"),
];

const OWNERS_FROM_EVENTS: &str = "UPDATE sandboxes SET owner = COALESCE(
    (SELECT actor FROM events WHERE events.sandbox = sandboxes.id AND events.kind = 'created' ORDER BY events.id LIMIT 1), 'local')";

/// Brings a database up to this kiln's schema.
fn migrate(db: &Connection) -> Result<()> {
    db.execute_batch(SCHEMA)?;
    for (table, column, definition) in ADDED_COLUMNS {
        let has: bool = db.prepare(&format!("SELECT 1 FROM pragma_table_info('{table}') WHERE name = ?1"))?.exists([column])?;
        if !has {
            db.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {definition}"))?;
            if column == "owner" {
                db.execute_batch(OWNERS_FROM_EVENTS)?;
            }
        }
    }
    Ok(())
}

/// Unix seconds now.
pub fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

fn row_to_record(r: &rusqlite::Row<'_>) -> rusqlite::Result<SandboxRecord> {
    let state: String = r.get(2)?;
    let info = SandboxInfo {
        id: r.get(0)?,
        template: r.get(1)?,
        state: State::parse(&state).unwrap_or(State::Failed),
        created_at: r.get(3)?,
        deadline: r.get(4)?,
        cpus: r.get(5)?,
        memory_mib: r.get(6)?,
        mode: r.get(7)?,
        parent: r.get(8)?,
    };
    Ok(SandboxRecord { info, run_dir: r.get(9)?, vmm_pid: r.get(10)?, owner: r.get(11)? })
}

const COLUMNS: &str = "id, template, state, created_at, deadline, cpus, memory_mib, mode, parent, run_dir, vmm_pid, owner";

impl Store {
    /// Opens (creating) the database at `path`.
    pub fn open(path: &Path) -> Result<Store> {
        // It holds exec command lines and the audit log: owner-only, created so (not chmod-ed
        // after), never through a link. SQLite gives its journal files the database's mode.
        // Journals an older kiln left world-readable are closed too.
        for (suffix, create) in [("", true), ("-wal", false), ("-shm", false)] {
            use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
            let mut name = path.as_os_str().to_owned();
            name.push(suffix);
            let file = |source| StoreError::File { path: std::path::Path::new(&name).display().to_string(), source };
            let opened = std::fs::OpenOptions::new().read(true).append(true).create(create).mode(0o600).custom_flags(libc::O_NOFOLLOW).open(&name);
            match opened {
                Ok(f) => f.set_permissions(std::fs::Permissions::from_mode(0o600)).map_err(file)?,
                Err(e) if !create && e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(file(e)),
            }
        }
        let db = Connection::open(path)?;
        db.busy_timeout(std::time::Duration::from_secs(5))?;
        migrate(&db)?;
        Ok(Store { db: Mutex::new(db) })
    }

    /// An in-memory database (tests).
    pub fn in_memory() -> Result<Store> {
        let db = Connection::open_in_memory()?;
        migrate(&db)?;
        Ok(Store { db: Mutex::new(db) })
    }

    pub(crate) fn db(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.db.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Inserts or replaces a sandbox record.
    pub fn put_sandbox(&self, s: &SandboxRecord) -> Result<()> {
        let i = &s.info;
        self.db().execute(
            &format!("INSERT OR REPLACE INTO sandboxes ({COLUMNS}, updated_at) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13)"),
            params![i.id, i.template, i.state.as_str(), i.created_at, i.deadline, i.cpus, i.memory_mib, i.mode, i.parent, s.run_dir, s.vmm_pid, s.owner, now()],
        )?;
        Ok(())
    }

    /// Sets a sandbox's state.
    pub fn set_state(&self, id: &str, state: State) -> Result<()> {
        self.db().execute("UPDATE sandboxes SET state = ?2, updated_at = ?3 WHERE id = ?1", params![id, state.as_str(), now()])?;
        Ok(())
    }

    /// Sets a sandbox's deadline.
    pub fn set_deadline(&self, id: &str, deadline: i64) -> Result<()> {
        self.db().execute("UPDATE sandboxes SET deadline = ?2, updated_at = ?3 WHERE id = ?1", params![id, deadline, now()])?;
        Ok(())
    }

    /// One sandbox.
    pub fn sandbox(&self, id: &str) -> Result<Option<SandboxRecord>> {
        Ok(self.db().query_row(&format!("SELECT {COLUMNS} FROM sandboxes WHERE id = ?1"), [id], row_to_record).optional()?)
    }

    /// Sandboxes not in a final state (what should be alive).
    pub fn live_sandboxes(&self) -> Result<Vec<SandboxRecord>> {
        let db = self.db();
        let mut st = db.prepare(&format!("SELECT {COLUMNS} FROM sandboxes WHERE state NOT IN ('stopped', 'failed') ORDER BY created_at"))?;
        let rows = st.query_map([], row_to_record)?.collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    /// Appends an audit event.
    pub fn event(&self, sandbox: Option<&str>, kind: &str, detail: &str, actor: &str) -> Result<()> {
        self.db().execute(
            "INSERT INTO events (at, sandbox, kind, detail, actor) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![now(), sandbox, kind, detail, actor],
        )?;
        Ok(())
    }

    /// Events about a sandbox (or all, with `None`), oldest first, at most `limit`.
    pub fn events(&self, sandbox: Option<&str>, limit: usize) -> Result<Vec<Event>> {
        let db = self.db();
        let map = |r: &rusqlite::Row<'_>| -> rusqlite::Result<Event> {
            Ok(Event { at: r.get(0)?, sandbox: r.get(1)?, kind: r.get(2)?, detail: r.get(3)?, actor: r.get(4)? })
        };
        let rows = match sandbox {
            Some(id) => db
                .prepare("SELECT at, sandbox, kind, detail, actor FROM events WHERE sandbox = ?1 ORDER BY id LIMIT ?2")?
                .query_map(params![id, limit as i64], map)?
                .collect::<rusqlite::Result<Vec<_>>>()?,
            None => db
                .prepare("SELECT at, sandbox, kind, detail, actor FROM events ORDER BY id LIMIT ?1")?
                .query_map(params![limit as i64], map)?
                .collect::<rusqlite::Result<Vec<_>>>()?,
        };
        Ok(rows)
    }

    /// Records a built template.
    pub fn put_template(&self, name: &str, digest: &str, size_bytes: u64, built_at: u64) -> Result<()> {
        self.db().execute(
            "INSERT OR REPLACE INTO templates (name, digest, size_bytes, built_at) VALUES (?1, ?2, ?3, ?4)",
            params![name, digest, size_bytes as i64, built_at as i64],
        )?;
        Ok(())
    }

    /// Records a baked snapshot.
    pub fn put_snapshot(&self, name: &str, template: &str, created_at: u64, bake_ms: u64) -> Result<()> {
        self.db().execute(
            "INSERT OR REPLACE INTO snapshots (name, template, created_at, bake_ms) VALUES (?1, ?2, ?3, ?4)",
            params![name, template, created_at as i64, bake_ms as i64],
        )?;
        Ok(())
    }

    /// Records a CI run whose outputs the daemon keeps.
    pub fn put_ci_run(&self, r: &CiRunRecord) -> Result<()> {
        self.db().execute("INSERT INTO ci_runs (id, owner, started_at) VALUES (?1, ?2, ?3)", params![r.id, r.owner, r.started_at])?;
        Ok(())
    }

    /// A CI run by id.
    pub fn ci_run(&self, id: &str) -> Result<Option<CiRunRecord>> {
        let map = |r: &rusqlite::Row<'_>| Ok(CiRunRecord { id: r.get(0)?, owner: r.get(1)?, started_at: r.get(2)? });
        Ok(self.db().query_row("SELECT id, owner, started_at FROM ci_runs WHERE id = ?1", [id], map).optional()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_database_and_its_journal_are_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("kiln.db");
        // Even a file and a journal left world-readable by an older kiln.
        for f in ["kiln.db", "kiln.db-wal"] {
            std::fs::write(d.path().join(f), b"").unwrap();
            std::fs::set_permissions(d.path().join(f), std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        let s = Store::open(&p).unwrap();
        s.put_sandbox(&rec("a", State::Running)).unwrap();
        for f in ["kiln.db", "kiln.db-wal", "kiln.db-shm"] {
            let m = std::fs::metadata(d.path().join(f)).unwrap();
            assert_eq!(m.permissions().mode() & 0o777, 0o600, "{f}");
        }
        // Never through a link.
        let link = d.path().join("link.db");
        std::os::unix::fs::symlink(&p, &link).unwrap();
        assert!(matches!(Store::open(&link), Err(StoreError::File { .. })));
    }

    fn rec(id: &str, state: State) -> SandboxRecord {
        let info = SandboxInfo {
            id: id.into(),
            template: "tiny".into(),
            state,
            created_at: 1,
            deadline: 2,
            cpus: 1,
            memory_mib: 256,
            mode: "restored".into(),
            parent: None,
        };
        SandboxRecord { info, run_dir: "/r".into(), vmm_pid: 7, owner: "ci".into() }
    }

    #[test]
    fn records_round_trip_and_old_rows_load() {
        let s = Store::in_memory().unwrap();
        let mut forked = rec("b", State::Paused);
        forked.info.mode = "forked".into();
        forked.info.parent = Some("a".into());
        for r in [rec("a", State::Running), forked] {
            s.put_sandbox(&r).unwrap();
            assert_eq!(s.sandbox(&r.info.id).unwrap(), Some(r));
        }
        // A row written column by column, as any earlier kiln did; an unknown state reads as failed.
        s.db()
            .execute_batch(
                "INSERT INTO sandboxes (id, template, state, created_at, deadline, cpus, memory_mib, mode, parent, run_dir, vmm_pid, updated_at)
                 VALUES ('old', 'base', 'running', 10, 20, 2, 512, 'cold', NULL, '/run/old', 42, 30),
                        ('odd', 'base', 'zombie', 11, 21, 1, 256, 'restored', NULL, '/run/odd', 43, 31);",
            )
            .unwrap();
        let old = s.sandbox("old").unwrap().unwrap();
        assert_eq!((old.info.template.as_str(), old.info.state, old.info.deadline, old.info.cpus, old.info.memory_mib), ("base", State::Running, 20, 2, 512));
        assert_eq!((old.info.mode.as_str(), old.info.parent.as_deref(), old.run_dir.as_str(), old.vmm_pid), ("cold", None, "/run/old", 42));
        assert_eq!(s.sandbox("odd").unwrap().unwrap().info.state, State::Failed);
        // A row that names no owner is the socket owner's.
        assert_eq!(old.owner, "local");
        // Its JSON is the API's sandbox and the host fields, side by side.
        let v = serde_json::to_value(&old).unwrap();
        assert_eq!((v["id"].as_str(), v["run_dir"].as_str(), v["vmm_pid"].as_u64(), v["owner"].as_str()), (Some("old"), Some("/run/old"), Some(42), Some("local")));
    }

    /// The schema of the kiln before scopes and owners, as it created its tables.
    const OLD_SCHEMA: &str = "
        CREATE TABLE sandboxes (
            id TEXT PRIMARY KEY, template TEXT NOT NULL, state TEXT NOT NULL, created_at INTEGER NOT NULL,
            deadline INTEGER NOT NULL, cpus INTEGER NOT NULL, memory_mib INTEGER NOT NULL, mode TEXT NOT NULL,
            parent TEXT, run_dir TEXT NOT NULL, vmm_pid INTEGER NOT NULL, updated_at INTEGER NOT NULL);
        CREATE TABLE tokens (name TEXT PRIMARY KEY, sha256 TEXT NOT NULL UNIQUE, created_at INTEGER NOT NULL);
        CREATE TABLE events (
            id INTEGER PRIMARY KEY AUTOINCREMENT, at INTEGER NOT NULL, sandbox TEXT, kind TEXT NOT NULL,
            detail TEXT NOT NULL, actor TEXT NOT NULL);
        INSERT INTO sandboxes VALUES ('sbx-a', 'tiny', 'running', 1, 2, 1, 256, 'restored', NULL, '/r/a', 7, 3);
        INSERT INTO sandboxes VALUES ('sbx-b', 'tiny', 'stopped', 1, 2, 1, 256, 'restored', NULL, '/r/b', 8, 3);
        INSERT INTO events (at, sandbox, kind, detail, actor) VALUES (1, 'sbx-a', 'exec', 'true', 'other');
        INSERT INTO events (at, sandbox, kind, detail, actor) VALUES (1, 'sbx-a', 'created', 'template tiny', 'ci');
        INSERT INTO tokens VALUES ('ci', '0000', 5);
    ";

    #[test]
    fn an_earlier_database_is_migrated() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("kiln.db");
        rusqlite::Connection::open(&path).unwrap().execute_batch(OLD_SCHEMA).unwrap();
        let s = Store::open(&path).unwrap();
        // A token without a scope is untrusted; a sandbox belongs to the actor of its `created`
        // event, or to the socket's owner when none is recorded.
        let tokens = s.tokens().unwrap();
        assert_eq!((tokens[0].name.as_str(), tokens[0].scope, tokens[0].created_at), ("ci", crate::access::Scope::Untrusted, 5));
        assert_eq!(s.sandbox("sbx-a").unwrap().unwrap().owner, "ci");
        assert_eq!(s.sandbox("sbx-b").unwrap().unwrap().owner, "local");
        // New tables are there, and opening it again changes nothing.
        assert_eq!(s.ci_run("ci-000000000000").unwrap(), None);
        drop(s);
        let s = Store::open(&path).unwrap();
        assert_eq!(s.sandbox("sbx-a").unwrap().unwrap().owner, "ci");
        assert_eq!(s.tokens().unwrap().len(), 1);
    }

    #[test]
    fn ci_runs_have_owners() {
        let s = Store::in_memory().unwrap();
        let r = CiRunRecord { id: "ci-0123456789ab".into(), owner: "ci".into(), started_at: 9 };
        s.put_ci_run(&r).unwrap();
        assert_eq!(s.ci_run(&r.id).unwrap(), Some(r.clone()));
        assert!(s.put_ci_run(&r).is_err(), "an id is used once");
    }

    #[test]
    fn sandboxes_and_events_persist() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("kiln.db");
        {
            let s = Store::open(&path).unwrap();
            s.put_sandbox(&rec("a", State::Running)).unwrap();
            s.put_sandbox(&rec("b", State::Stopped)).unwrap();
            s.set_deadline("a", 99).unwrap();
            s.event(Some("a"), "created", "tiny", "local").unwrap();
        }
        // Reopened: everything is still there.
        let s = Store::open(&path).unwrap();
        let live = s.live_sandboxes().unwrap();
        assert_eq!(live.len(), 1);
        assert_eq!((live[0].info.deadline, live[0].owner.as_str()), (99, "ci"));
        assert_eq!(s.events(Some("a"), 10).unwrap()[0].kind, "created");
        s.set_state("a", State::Failed).unwrap();
        assert!(s.live_sandboxes().unwrap().is_empty());
    }
}
