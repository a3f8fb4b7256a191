//! A sever config built as data and rendered with the `toml` crate, instead of TOML text
//! pieced together with `format!`: the quoting and the table headers are the crate's.
//!
//! ```ignore
//! let text = ws.config()                      // store, webhook secret, timeouts, operator
//!     .target_postgres("main", &url_file)
//!     .credential("orders", &[("main", "app")])
//!     .set("termination.timeout", "2s")
//!     .toml();
//! ```
//!
//! Calls only `toml`; `Workspace` (`support::sever`) starts every config from
//! [`ConfigBuilder::new`].

use toml::{Table, Value};

/// A config under construction: one TOML table, keys addressed by dotted paths.
#[derive(Clone, Debug, Default)]
pub struct ConfigBuilder {
    table: Table,
}

impl ConfigBuilder {
    /// An empty config.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the key at the dotted `path` (`"termination.timeout"`), creating its tables.
    pub fn set(mut self, path: &str, value: impl Into<Value>) -> Self {
        let (tables, key) = match path.rsplit_once('.') {
            Some((tables, key)) => (tables.split('.').collect::<Vec<_>>(), key),
            None => (Vec::new(), path),
        };
        let mut table = &mut self.table;
        for name in tables {
            table = table
                .entry(name)
                .or_insert_with(|| Value::Table(Table::new()))
                .as_table_mut()
                .unwrap_or_else(|| panic!("{name} in {path} is not a table"));
        }
        table.insert(key.to_owned(), value.into());
        self
    }

    /// Removes the key at the dotted `path`, if there is one.
    pub fn remove(mut self, path: &str) -> Self {
        let mut parts: Vec<&str> = path.split('.').collect();
        let key = parts.pop().expect("a non-empty path");
        let mut table = &mut self.table;
        for name in parts {
            match table.get_mut(name).and_then(Value::as_table_mut) {
                Some(inner) => table = inner,
                None => return self,
            }
        }
        table.remove(key);
        self
    }

    /// Merges TOML `text` in: its tables into the ones here, its keys over the ones here.
    pub fn merge_toml(mut self, text: &str) -> Self {
        let other: Table = text
            .parse()
            .unwrap_or_else(|e| panic!("test TOML does not parse: {e}\n{text}"));
        merge(&mut self.table, other);
        self
    }

    /// Merges `other` in, as [`ConfigBuilder::merge_toml`] does.
    pub fn merge(mut self, other: &ConfigBuilder) -> Self {
        merge(&mut self.table, other.table.clone());
        self
    }

    /// A `[targets.<id>]` table for a PostgreSQL target whose URL is in the file `url_file`.
    pub fn target_postgres(self, id: &str, url_file: &str) -> Self {
        self.target(id, "postgres", url_file)
    }

    /// A `[targets.<id>]` table for `engine`, its URL in the file `url_file`, and a 2 s
    /// connect timeout.
    pub fn target(self, id: &str, engine: &str, url_file: &str) -> Self {
        self.set(&format!("targets.{id}.engine"), engine)
            .set(&format!("targets.{id}.url"), file(url_file))
            .set(&format!("targets.{id}.connect_timeout"), "2s")
    }

    /// A `[credentials.<name>]` table naming `logins` as `(target, login)` pairs.
    pub fn credential(self, name: &str, logins: &[(&str, &str)]) -> Self {
        let logins: Vec<Value> = logins
            .iter()
            .map(|(target, login)| {
                let mut entry = Table::new();
                entry.insert("target".into(), (*target).into());
                entry.insert("login".into(), (*login).into());
                Value::Table(entry)
            })
            .collect();
        self.set(&format!("credentials.{name}.logins"), logins)
    }

    /// One more `[[operators]]` entry.
    pub fn operator(mut self, name: &str, token_sha256: &str) -> Self {
        let mut entry = Table::new();
        entry.insert("name".into(), name.into());
        entry.insert("token_sha256".into(), token_sha256.into());
        let operators = self
            .table
            .entry("operators")
            .or_insert_with(|| Value::Array(Vec::new()));
        operators
            .as_array_mut()
            .expect("operators is an array")
            .push(Value::Table(entry));
        self
    }

    /// The config as TOML text.
    pub fn toml(&self) -> String {
        toml::to_string(&self.table).expect("a config renders as TOML")
    }
}

/// `{ file = "<path>" }`: a secret read from a file.
pub fn file(path: &str) -> Value {
    let mut table = Table::new();
    table.insert("file".into(), path.into());
    Value::Table(table)
}

fn merge(into: &mut Table, from: Table) {
    for (key, value) in from {
        match (into.get_mut(&key), value) {
            (Some(Value::Table(mine)), Value::Table(theirs)) => merge(mine, theirs),
            (_, value) => {
                into.insert(key, value);
            }
        }
    }
}
