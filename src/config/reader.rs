//! Reading a TOML file against what Volt expects, with errors that say what to fix: the field
//! path (`network[0].mtu`), the type and range wanted, every unknown key (in line order, with
//! "did you mean" for a close one, and a hint when a top-level key landed inside a
//! `[[network]]` table), and `[network]` written where `[[network]]` is meant.
//!
//! The callers ask for each key with a typed getter; what they never asked for is unknown.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::ops::Range;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::error::ConfigError;
use super::span::Src;

/// The errors found so far, reported together at the end.
pub(crate) type Errors = Vec<ConfigError>;

/// Parse `text` as a TOML document; a syntax error is the only error then.
pub(crate) fn parse<'i>(src: &Src, text: &'i str) -> Result<Spanned<DeTable<'i>>, ConfigError> {
    DeTable::parse(text).map_err(|e| src.toml_error(&e))
}

/// A config file opened: its source for messages, the name its file name gives, its document.
/// `check_name` says what is wrong with the name (the whole message), if anything; a bad name
/// or a syntax error is the only error then.
pub(crate) fn open<'i>(
    path: &'i std::path::Path,
    text: &'i str,
    check_name: impl FnOnce(&str) -> Result<(), String>,
) -> Result<(Src<'i>, String, Spanned<DeTable<'i>>), Vec<ConfigError>> {
    let src = Src::new(path, text);
    let name = super::file_stem(path);
    check_name(&name).map_err(|m| vec![src.whole("name", m)])?;
    let doc = parse(&src, text).map_err(|e| vec![e])?;
    Ok((src, name, doc))
}

/// Read a config file: open it (see [`open`]), then `body` reads its root table into a `T`,
/// pushing what is wrong onto the errors. Every error found, in line order, or the `T`.
pub(crate) fn read<T>(
    path: &std::path::Path,
    text: &str,
    check_name: impl FnOnce(&str) -> Result<(), String>,
    body: impl FnOnce(&Src, String, &Table, &mut Errors) -> T,
) -> Result<T, Vec<ConfigError>> {
    let (src, name, doc) = open(path, text, check_name)?;
    let mut errors = Vec::new();
    let out = body(&src, name, &Table::root(&doc), &mut errors);
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(in_line_order(errors))
    }
}

/// The first `max` of an array of tables (`key`); one more is an error saying `limit`.
pub(crate) fn at_most<'a, 't, 'i>(
    src: &Src,
    e: &mut Errors,
    tables: &'a [Table<'t, 'i>],
    key: &str,
    max: usize,
    limit: String,
) -> &'a [Table<'t, 'i>] {
    if let Some(extra) = tables.get(max) {
        e.push(src.invalid(key, extra.span(), limit));
    }
    tables.get(..max).unwrap_or(tables)
}

/// One table of the document, as seen from the path that leads to it.
pub(crate) struct Table<'t, 'i> {
    path: String,
    table: &'t DeTable<'i>,
    span: Range<usize>,
    asked: RefCell<Vec<&'static str>>,
    /// Keys written where they do not belong, reported by [`Table::refuse`].
    refused: RefCell<Vec<&'static str>>,
}

/// A short, readable name of a TOML value's type.
fn type_name(v: &DeValue) -> &'static str {
    match v {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a date-time",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

/// Entries of `<root>/etc/volt` that look like a mistyped name of one Volt reads
/// (`/etc/volt/vm/`, `clustr.toml`): nothing reads them, so a file put there would be ignored
/// without a word. One warning each, naming what was meant.
pub(crate) fn near_misses(root: &std::path::Path) -> Vec<String> {
    const KNOWN: [&str; 4] = ["vms", "containers", "networks", "cluster.toml"];
    let Ok(dir) = std::fs::read_dir(root.join("etc/volt")) else {
        return Vec::new();
    };
    let mut out: Vec<String> = dir
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let lower = name.to_ascii_lowercase();
            let meant = KNOWN
                .iter()
                .find(|k| name != **k && distance(&lower, k) <= 1)?;
            Some(format!(
                "/etc/volt/{name} is not read by Volt: did you mean /etc/volt/{meant}?"
            ))
        })
        .collect();
    out.sort();
    out
}

/// Levenshtein distance, for "did you mean".
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

impl<'t, 'i> Table<'t, 'i> {
    /// The document's top-level table.
    pub fn root(doc: &'t Spanned<DeTable<'i>>) -> Self {
        Table {
            path: String::new(),
            table: doc.get_ref(),
            span: doc.span(),
            asked: RefCell::new(Vec::new()),
            refused: RefCell::new(Vec::new()),
        }
    }

    /// `key` under this table's path, for messages.
    pub fn field(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    /// Where this table starts (for "missing" errors of its fields).
    pub fn span(&self) -> Range<usize> {
        self.span.clone()
    }

    /// Whether the key is written at all (a value of the wrong type was reported already).
    pub fn has(&self, key: &str) -> bool {
        self.table.contains_key(key)
    }

    fn get(&self, key: &'static str) -> Option<&'t Spanned<DeValue<'i>>> {
        self.asked.borrow_mut().push(key);
        self.table.get(key)
    }

    fn wrong_type(&self, src: &Src, key: &str, v: &Spanned<DeValue>, want: &str) -> ConfigError {
        src.invalid(
            &self.field(key),
            v.span(),
            format!("expected {want}, found {}", type_name(v.get_ref())),
        )
    }

    /// A key that belongs elsewhere (a VM NIC key in a container's entry): when written, an
    /// error at it saying `why`, instead of "unknown key" with a far-fetched guess.
    pub fn refuse(&self, src: &Src, e: &mut Errors, key: &'static str, why: &str) {
        if let Some((k, _)) = self.table.iter().find(|(k, _)| k.get_ref() == key) {
            self.refused.borrow_mut().push(key);
            e.push(src.invalid(&self.field(key), k.span(), why.to_string()));
        }
    }

    /// Whether `key` holds a table (rather than a plain value).
    pub fn is_table(&self, key: &'static str) -> bool {
        self.table.get(key).is_some_and(|v| v.get_ref().is_table())
    }

    /// A string.
    pub fn string(&self, src: &Src, e: &mut Errors, key: &'static str) -> Option<Spanned<String>> {
        let v = self.get(key)?;
        match v.get_ref().as_str() {
            Some(s) => Some(Spanned::new(v.span(), s.to_string())),
            None => {
                e.push(self.wrong_type(src, key, v, "a string"));
                None
            }
        }
    }

    /// A boolean.
    pub fn boolean(&self, src: &Src, e: &mut Errors, key: &'static str) -> Option<Spanned<bool>> {
        let v = self.get(key)?;
        match v.get_ref().as_bool() {
            Some(b) => Some(Spanned::new(v.span(), b)),
            None => {
                e.push(self.wrong_type(src, key, v, "true or false"));
                None
            }
        }
    }

    /// An integer in `range` (`unit` follows the numbers in messages, e.g. " MiB").
    pub fn integer<T>(
        &self,
        src: &Src,
        e: &mut Errors,
        key: &'static str,
        range: std::ops::RangeInclusive<T>,
        unit: &str,
    ) -> Option<Spanned<T>>
    where
        T: TryFrom<i128> + Copy + PartialOrd + std::fmt::Display,
    {
        let v = self.get(key)?;
        let (lo, hi) = (*range.start(), *range.end());
        let want = format!("an integer from {lo} to {hi}{unit}");
        let Some(int) = v.get_ref().as_integer() else {
            e.push(self.wrong_type(src, key, v, &want));
            return None;
        };
        let n = i128::from_str_radix(int.as_str(), int.radix()).ok();
        match n
            .and_then(|n| T::try_from(n).ok())
            .filter(|n| range.contains(n))
        {
            Some(n) => Some(Spanned::new(v.span(), n)),
            None => {
                e.push(src.invalid(
                    &self.field(key),
                    v.span(),
                    format!("{int} is outside {lo}-{hi}{unit}"),
                ));
                None
            }
        }
    }

    /// An array of strings.
    pub fn strings(
        &self,
        src: &Src,
        e: &mut Errors,
        key: &'static str,
    ) -> Option<Spanned<Vec<String>>> {
        let list = self.string_list(src, e, key)?;
        let span = list.span();
        let items = list.into_inner().into_iter().map(Spanned::into_inner);
        Some(Spanned::new(span, items.collect()))
    }

    /// An array of strings, each with where it is written.
    pub fn string_list(
        &self,
        src: &Src,
        e: &mut Errors,
        key: &'static str,
    ) -> Option<Spanned<Vec<Spanned<String>>>> {
        let v = self.get(key)?;
        let Some(array) = v.get_ref().as_array() else {
            e.push(self.wrong_type(src, key, v, "an array of strings"));
            return None;
        };
        let mut items = Vec::with_capacity(array.len());
        for (i, x) in array.iter().enumerate() {
            match x.get_ref().as_str() {
                Some(s) => items.push(Spanned::new(x.span(), s.to_owned())),
                // The element that is not a string, where it is written.
                None => {
                    e.push(src.invalid(
                        &format!("{}[{i}]", self.field(key)),
                        x.span(),
                        format!("expected a string, found {}", type_name(x.get_ref())),
                    ));
                    return None;
                }
            }
        }
        Some(Spanned::new(v.span(), items))
    }

    /// One of `choices` (a string).
    pub fn choice<T: Copy>(
        &self,
        src: &Src,
        e: &mut Errors,
        key: &'static str,
        choices: &[(&str, T)],
    ) -> Option<T> {
        let s = self.string(src, e, key)?;
        match choices.iter().find(|(name, _)| *name == s.get_ref()) {
            Some((_, v)) => Some(*v),
            None => {
                let names: Vec<&str> = choices.iter().map(|(n, _)| *n).collect();
                e.push(src.invalid(
                    &self.field(key),
                    s.span(),
                    format!("{:?} is not one of {}", s.get_ref(), names.join(", ")),
                ));
                None
            }
        }
    }

    /// A sub-table (`[key]`).
    pub fn table(&self, src: &Src, e: &mut Errors, key: &'static str) -> Option<Table<'t, 'i>> {
        let v = self.get(key)?;
        match v.get_ref().as_table() {
            Some(t) => Some(Table {
                path: self.field(key),
                table: t,
                span: v.span(),
                asked: RefCell::new(Vec::new()),
                refused: RefCell::new(Vec::new()),
            }),
            None => {
                e.push(self.wrong_type(src, key, v, "a table"));
                None
            }
        }
    }

    /// An array of tables (`[[key]]`). A single `[key]` table gets a hint.
    pub fn tables(&self, src: &Src, e: &mut Errors, key: &'static str) -> Vec<Table<'t, 'i>> {
        let Some(v) = self.get(key) else {
            return Vec::new();
        };
        if v.get_ref().is_table() {
            e.push(src.invalid(
                &self.field(key),
                v.span(),
                format!("write [[{key}]] (one table per entry), not [{key}]"),
            ));
            return Vec::new();
        }
        let Some(items) = v.get_ref().as_array() else {
            e.push(self.wrong_type(src, key, v, &format!("[[{key}]] tables")));
            return Vec::new();
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            match item.get_ref().as_table() {
                Some(t) => out.push(Table {
                    path: format!("{}[{i}]", self.field(key)),
                    table: t,
                    span: item.span(),
                    asked: RefCell::new(Vec::new()),
                    refused: RefCell::new(Vec::new()),
                }),
                None => e.push(self.wrong_type(src, key, item, "a table")),
            }
        }
        out
    }

    /// A table of strings (`[reservations]`), in key order.
    pub fn string_map(
        &self,
        src: &Src,
        e: &mut Errors,
        key: &'static str,
    ) -> BTreeMap<String, Spanned<String>> {
        let mut out = BTreeMap::new();
        let Some(t) = self.table(src, e, key) else {
            return out;
        };
        for (k, v) in t.table.iter() {
            match v.get_ref().as_str() {
                Some(s) => {
                    out.insert(
                        k.get_ref().to_string(),
                        Spanned::new(v.span(), s.to_string()),
                    );
                }
                None => e.push(t.wrong_type(src, k.get_ref(), v, "a string")),
            }
        }
        out
    }

    /// Report every key nobody asked for, in line order: "did you mean" a close known key;
    /// a key the enclosing table knows (`outer`) gets a hint that it landed in this table
    /// because it follows its header.
    pub fn finish(&self, src: &Src, e: &mut Errors, outer: &[&'static str]) {
        let asked = self.asked.borrow();
        let refused = self.refused.borrow();
        let mut unknown: Vec<(&Spanned<_>, &str)> = self
            .table
            .iter()
            .map(|(k, _)| (k, k.get_ref().as_ref()))
            .filter(|(_, k)| !asked.contains(k) && !refused.contains(k))
            .collect();
        unknown.sort_by_key(|(k, _)| k.span().start);
        for (k, name) in unknown {
            let hint = if outer.contains(&name) {
                format!(
                    "; {name} is a top-level key: move it above the first [[{}]] line",
                    self.path.split('[').next().unwrap_or("")
                )
            } else {
                // Keys are lowercase: `VCPUS` is `vcpus` misspelt by case only.
                let lower = name.to_ascii_lowercase();
                asked
                    .iter()
                    .map(|a| (distance(&lower, a), *a))
                    .filter(|(d, a)| *d <= 2.max(a.len() / 3))
                    .min()
                    .map(|(_, a)| format!("; did you mean {a}?"))
                    .unwrap_or_default()
            };
            let known = {
                let mut k: Vec<&str> = asked.clone();
                k.sort_unstable();
                k.dedup();
                k.join(", ")
            };
            e.push(src.invalid(
                &self.field(name),
                k.span(),
                format!("unknown key{hint} (known here: {known})"),
            ));
        }
    }

    /// The keys this table was asked for so far (for an inner table's `finish`).
    pub fn asked(&self) -> Vec<&'static str> {
        self.asked.borrow().clone()
    }
}

/// Sort errors into the order of the file: whole-file errors first, then by line and column.
pub(crate) fn in_line_order(mut errors: Errors) -> Errors {
    errors.sort_by_key(|e| match e {
        ConfigError::Invalid { at, .. }
        | ConfigError::Syntax { at, .. }
        | ConfigError::Unreadable { at, .. } => (at.line, at.col),
        _ => (0, 0),
    });
    errors
}

/// The value of the first line `key <sep> value` of a file that does not parse (TOML's `=`,
/// YAML's `:`), without its quotes: what a broken network file would define, for the NICs
/// that name it.
pub(crate) fn line_value(text: &str, key: &str, sep: char) -> Option<String> {
    text.lines().find_map(|l| {
        let v = l
            .trim()
            .strip_prefix(key)?
            .trim_start()
            .strip_prefix(sep)?
            .trim();
        let v = match v.chars().next() {
            Some(q @ ('"' | '\'')) => v[1..].split(q).next()?,
            _ => v,
        };
        (!v.is_empty()).then(|| v.to_string())
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn read(text: &str, f: impl Fn(&Src, &Table, &mut Errors)) -> Vec<String> {
        let src = Src::new(Path::new("/f.toml"), text);
        let doc = parse(&src, text).expect("parses");
        let t = Table::root(&doc);
        let mut e = Vec::new();
        f(&src, &t, &mut e);
        in_line_order(e).iter().map(|e| e.to_string()).collect()
    }

    #[test]
    fn mistyped_names_under_etc_volt_are_pointed_out() {
        let tmp = tempfile::tempdir().expect("tmp");
        let etc = tmp.path().join("etc/volt");
        for d in ["vm", "network", "vms", "tls", "VMs"] {
            std::fs::create_dir_all(etc.join(d)).expect("mkdir");
        }
        std::fs::write(etc.join("clustr.toml"), "").expect("write");
        assert_eq!(
            near_misses(tmp.path()),
            [
                "/etc/volt/VMs is not read by Volt: did you mean /etc/volt/vms?",
                "/etc/volt/clustr.toml is not read by Volt: did you mean /etc/volt/cluster.toml?",
                "/etc/volt/network is not read by Volt: did you mean /etc/volt/networks?",
                "/etc/volt/vm is not read by Volt: did you mean /etc/volt/vms?",
            ]
        );
    }

    #[test]
    fn types_ranges_unknown_keys_and_misplaced_tables() {
        let got = read(
            "vcpus = \"2\"\nmemroy_mib = 1\nmemory_mib = 99999999999999\n[network]\nid = 1\n",
            |src, t, e| {
                t.integer::<u32>(src, e, "vcpus", 1..=64, "");
                t.integer::<u32>(src, e, "memory_mib", 16..=1024, " MiB");
                t.tables(src, e, "network");
                t.finish(src, e, &[]);
            },
        );
        assert_eq!(
            got,
            [
                "/f.toml:1:9: vcpus: expected an integer from 1 to 64, found a string",
                "/f.toml:2:1: memroy_mib: unknown key; did you mean memory_mib? (known here: memory_mib, network, vcpus)",
                "/f.toml:3:14: memory_mib: 99999999999999 is outside 16-1024 MiB",
                "/f.toml:4:1: network: write [[network]] (one table per entry), not [network]",
            ]
        );
        let got = read("[[network]]\nid = \"eth0\"\nvcpus = 4\n", |src, t, e| {
            t.integer::<u32>(src, e, "vcpus", 1..=64, "");
            for n in t.tables(src, e, "network") {
                n.string(src, e, "id");
                n.finish(src, e, &t.asked());
            }
            t.finish(src, e, &[]);
        });
        assert_eq!(
            got,
            ["/f.toml:3:1: network[0].vcpus: unknown key; vcpus is a top-level key: move it above the first [[network]] line (known here: id)"]
        );
    }
}
