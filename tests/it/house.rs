//! The house's rules, read off `src/` (see `ARCHITECTURE.md`, "Rooms"):
//!
//! 1. Rooms import only from rooms below them: `main.rs` → `cli/`, `filter/`, `worker/` →
//!    `queue/` → `store/` → `config/` → `util/`; `cli/`, `filter/` and `worker/` never import
//!    each other. Nothing imports the crate root itself (`crate` alone, `crate::*`, an item of
//!    `lib.rs`), and no file is pulled in by `#[path]` or `include!`, which this test could
//!    not follow.
//! 2. No files import each other in a circle (a folder's `mod.rs` is a file like any other),
//!    and within any folder its entries, sub-folders taken whole, import each other in one
//!    direction only.
//!
//! An import is any path the code names (`use` trees and paths in expressions), resolved as
//! rustc would: `crate::`, `swiftdrop::` (from `main.rs`), `super::`, `self::`, a child
//! module's name, a name a `use` brought in (modules, and items followed to the module that
//! defines them, through re-exports). Comments and literals are not code; doc links do not
//! count.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Rooms from the bottom up; a room may import from rooms with a lower rank. Rooms with the
/// same rank are siblings and may not import each other.
const ROOMS: &[(&str, u8)] = &[
    ("util", 0),
    ("config", 1),
    ("telemetry", 1),
    ("store", 2),
    ("queue", 3),
    ("cli", 4),
    ("admin", 4),
    ("filter", 4),
    ("worker", 4),
    ("main", 5),
    ("fuzzing", 5),
];

#[test]
fn rooms_import_only_from_below() {
    let house = House::read(&src_dir());
    // The reading itself: a lexer that blanked real code would pass every rule.
    for (from, to) in [
        ("filter::session", "filter::deliver"),
        ("worker::dequeue", "queue::handle"),
        ("queue::claim", "util::failpoint"),
        ("main", "cli::queue"),
        ("store::swift::upload", "util::hex"),
    ] {
        assert!(
            house.has_import(from, to),
            "{from} → {to} not found: the house test no longer reads src/ right"
        );
    }
    let offences = house.room_offences();
    assert!(
        offences.is_empty(),
        "imports that run up or sideways between rooms:\n{}",
        offences.join("\n")
    );
}

#[test]
fn no_files_import_each_other_in_a_circle() {
    let circles = House::read(&src_dir()).circles();
    assert!(
        circles.is_empty(),
        "files or folder entries that import each other in a circle:\n{}",
        circles.join("\n")
    );
}

/// The rules catch what they are for, on a made-up house: an upward import, a sideways one
/// through an aliased group, the crate root, a `#[path]` module, circles between files,
/// between a `mod.rs` and its child through a re-export, and between sub-folders.
#[test]
fn the_rules_catch_what_they_are_for() {
    let dir = tempfile::tempdir().unwrap();
    let write = |path: &str, text: &str| {
        let path = dir.path().join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    };
    write(
        "lib.rs",
        "pub mod config; pub mod store; pub mod filter; pub mod worker;",
    );
    write(
        "main.rs",
        "use swiftdrop::filter;\nfn main() { filter::server::run(); }",
    );
    write("config/mod.rs", "mod sources;\npub use sources::Raw;\n");
    write(
        "config/sources.rs",
        "pub struct Raw;\nfn f() -> char { let _ = ['\\'', '\"']; self::super::super::store::key::make() }",
    );
    write(
        "store/mod.rs",
        "//! crate::filter in a comment\npub mod key;\nmod a;\nmod b;\nuse crate::{config::Raw as R, filter::X};\n",
    );
    write(
        "store/key.rs",
        "pub fn make() { let s = r#\"crate::worker::Y\"#; let c = 'x'; fn l<'a>(x: &'a str) {} }",
    );
    write("store/a.rs", "use super::b::Thing;\n");
    write("store/b.rs", "pub struct Thing;\nfn g() { super::a::f(); }");
    write(
        "filter/mod.rs",
        "pub mod server;\n#[path = \"../x.rs\"] mod x;\n",
    );
    write(
        "filter/server.rs",
        "use crate as root;\npub fn run() { root::worker::rules::w(); }\nmod tests { use super::*; fn t() { super::super::server::run(); } }",
    );
    write("worker/mod.rs", "pub mod rules; pub mod sinks;\n");
    write(
        "worker/rules/mod.rs",
        "pub fn w() { crate::worker::sinks::s(); }",
    );
    write(
        "worker/sinks/mod.rs",
        "mod mail;\npub use mail::s;\nfn z() { crate::config::sources::Raw; }",
    );
    write(
        "worker/sinks/mail.rs",
        "pub fn s() { super::super::rules::w(); }",
    );
    let house = House::read(dir.path());
    let edges: BTreeSet<String> = house
        .imports
        .iter()
        .map(|i| format!("{} -> {}", i.from.join("::"), i.to.join("::")))
        .collect();
    let expected: BTreeSet<String> = [
        "main -> filter",
        "main -> filter::server",
        "config -> config::sources",
        "config::sources -> store::key",
        "store -> config::sources",
        "store -> filter",
        "store::a -> store::b",
        "store::b -> store::a",
        "filter::server -> ",
        "filter::server -> worker::rules",
        "worker::rules -> worker::sinks::mail",
        "worker::sinks -> worker::sinks::mail",
        "worker::sinks -> config::sources",
        "worker::sinks::mail -> worker::rules",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(edges, expected);
    assert_eq!(
        house.room_offences(),
        [
            "config/sources.rs:2: self::super::super::store::key::make (config may not import from store)",
            "filter/mod.rs:2: #[path] or include! brings in a file this test cannot follow",
            "filter/server.rs:1: crate (names the crate root: import from the room itself)",
            "filter/server.rs:2: root::worker::rules::w (filter may not import from worker)",
            "store/mod.rs:5: crate::filter::X (store may not import from filter)",
        ]
    );
    let headings: Vec<String> = house
        .circles()
        .iter()
        .map(|c| c.lines().next().unwrap().to_string())
        .collect();
    assert_eq!(
        headings,
        [
            "files: worker::rules → worker::sinks::mail → worker::rules",
            "files: store::a → store::b → store::a",
            "src/: config → store → config",
            "src/store: a → b → a",
            "src/worker: rules → sinks → rules",
        ]
    );
}

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The room a module lives in, with its rank; `None` for the crate root (`lib.rs`).
fn room(module: &[String]) -> Option<(&'static str, u8)> {
    let first = module.first()?;
    let found = ROOMS.iter().find(|(name, _)| name == first).copied();
    assert!(
        found.is_some(),
        "src/{first} is in no room: add it to ROOMS"
    );
    found
}

/// The entry of `folder` that `module` is in (a file or a sub-folder of it), if `module` is
/// strictly inside `folder`.
fn entry(folder: &[String], module: &[String]) -> Option<String> {
    (module.len() > folder.len() && module.starts_with(folder))
        .then(|| module[folder.len()].clone())
}

/// A circle in `edges` as its nodes, the first repeated at the end.
fn find_circle<N: Ord + Clone, T>(edges: &BTreeMap<N, BTreeMap<N, T>>) -> Option<Vec<N>> {
    fn visit<N: Ord + Clone, T>(
        node: &N,
        edges: &BTreeMap<N, BTreeMap<N, T>>,
        path: &mut Vec<N>,
        done: &mut BTreeSet<N>,
    ) -> Option<Vec<N>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut circle = path[at..].to_vec();
            circle.push(node.clone());
            return Some(circle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.clone());
        for next in edges.get(node).into_iter().flat_map(|e| e.keys()) {
            if let Some(circle) = visit(next, edges, path, done) {
                return Some(circle);
            }
        }
        path.pop();
        done.insert(node.clone());
        None
    }
    let mut done = BTreeSet::new();
    edges
        .keys()
        .find_map(|node| visit(node, edges, &mut Vec::new(), &mut done))
}

/// One path a module names that resolves to another module of the crate.
#[derive(Debug)]
struct Import {
    from: Vec<String>,
    to: Vec<String>,
    /// `file:line`, relative to `src/`.
    place: String,
    /// The path as written (braces expanded).
    path: String,
}

/// A name one `use` brings into a module: `alias` stands for `path`.
#[derive(Debug, Clone)]
struct UseName {
    alias: String,
    path: Vec<String>,
    /// Where the `use` is (the module plus inline modules around it).
    scope: Vec<String>,
    glob: bool,
}

struct File {
    module: Vec<String>,
    shown: String,
    code: String,
    uses: Vec<(usize, UseName)>,
}

struct House {
    /// Every module that is a file: `["store", "swift"]` for `store/swift/mod.rs`; `[]` for
    /// `lib.rs`, `["main"]` for `main.rs`.
    modules: BTreeSet<Vec<String>>,
    /// The names each module's `use` declarations bring in.
    uses: BTreeMap<Vec<String>, Vec<UseName>>,
    imports: Vec<Import>,
    /// Constructs the reading cannot follow, as `file:line: what`.
    unreadable: Vec<String>,
}

impl House {
    fn read(src: &Path) -> House {
        let mut paths = Vec::new();
        collect_files(src, &mut paths);
        let files: Vec<File> = paths
            .iter()
            .map(|path| {
                let module = module_of(src, path);
                let code = code_only(&std::fs::read_to_string(path).unwrap());
                let uses = use_declarations(&code, &module);
                File {
                    shown: path.strip_prefix(src).unwrap().display().to_string(),
                    module,
                    code,
                    uses,
                }
            })
            .collect();
        let mut house = House {
            modules: files.iter().map(|f| f.module.clone()).collect(),
            uses: BTreeMap::new(),
            imports: Vec::new(),
            unreadable: Vec::new(),
        };
        for file in &files {
            house
                .uses
                .entry(file.module.clone())
                .or_default()
                .extend(file.uses.iter().map(|(_, u)| u.clone()));
        }
        for file in &files {
            let line_of = |offset: usize| file.code[..offset].matches('\n').count() + 1;
            for marker in ["#[path", "include!("] {
                for (offset, _) in file.code.match_indices(marker) {
                    house.unreadable.push(format!(
                        "{}:{}: #[path] or include! brings in a file this test cannot follow",
                        file.shown,
                        line_of(offset)
                    ));
                }
            }
            let mut found: Vec<(usize, Vec<String>)> = file
                .uses
                .iter()
                .map(|(offset, u)| (*offset, u.path.clone()))
                .collect();
            found.extend(expression_paths(&file.code));
            for (offset, path) in found {
                let here = [file.module.clone(), inline_modules_at(&file.code, offset)].concat();
                let Some(to) = house.resolve(&file.module, &here, &path, 0) else {
                    continue;
                };
                let is_root = to.is_empty() && !file.module.is_empty();
                if to != file.module && (!to.is_empty() || is_root) {
                    house.imports.push(Import {
                        from: file.module.clone(),
                        to,
                        place: format!("{}:{}", file.shown, line_of(offset)),
                        path: path.join("::"),
                    });
                }
            }
        }
        house.imports.sort_by(|a, b| a.place.cmp(&b.place));
        house
    }

    fn has_import(&self, from: &str, to: &str) -> bool {
        self.imports
            .iter()
            .any(|i| i.from.join("::") == from && i.to.join("::") == to)
    }

    /// Imports that run up or sideways between rooms, or name the crate root, and what the
    /// reading cannot follow; one line each.
    fn room_offences(&self) -> Vec<String> {
        let mut offences = self.unreadable.clone();
        for import in &self.imports {
            if import.to.is_empty() {
                offences.push(format!(
                    "{}: {} (names the crate root: import from the room itself)",
                    import.place, import.path
                ));
                continue;
            }
            let (Some(from), Some(to)) = (room(&import.from), room(&import.to)) else {
                continue;
            };
            if from.0 != to.0 && to.1 >= from.1 {
                offences.push(format!(
                    "{}: {} ({} may not import from {})",
                    import.place, import.path, from.0, to.0
                ));
            }
        }
        offences.sort();
        offences
    }

    /// Circles between files, then between the entries of each folder; each with the lines
    /// that make it.
    fn circles(&self) -> Vec<String> {
        let mut found = Vec::new();
        let mut files: BTreeMap<Vec<String>, BTreeMap<Vec<String>, Vec<&Import>>> = BTreeMap::new();
        for import in self.imports.iter().filter(|i| !i.to.is_empty()) {
            let to = files.entry(import.from.clone()).or_default();
            to.entry(import.to.clone()).or_default().push(import);
        }
        while let Some(circle) = find_circle(&files) {
            let shown: Vec<String> = circle.iter().map(|m| m.join("::")).collect();
            found.push(describe(
                &format!("files: {}", shown.join(" → ")),
                &circle,
                &files,
            ));
            // Cut the circle's first edge, to look for the next one.
            files.get_mut(&circle[0]).unwrap().remove(&circle[1]);
        }
        for folder in self.folders() {
            let mut edges: BTreeMap<String, BTreeMap<String, Vec<&Import>>> = BTreeMap::new();
            for import in &self.imports {
                let (Some(a), Some(b)) = (entry(&folder, &import.from), entry(&folder, &import.to))
                else {
                    continue;
                };
                if a != b {
                    edges
                        .entry(a)
                        .or_default()
                        .entry(b)
                        .or_default()
                        .push(import);
                }
            }
            if let Some(circle) = find_circle(&edges) {
                let heading = format!("src/{}: {}", folder.join("/"), circle.join(" → "));
                found.push(describe(&heading, &circle, &edges));
            }
        }
        found
    }

    /// Every folder module (`mod.rs` or `lib.rs`).
    fn folders(&self) -> Vec<Vec<String>> {
        self.modules
            .iter()
            .filter(|m| {
                self.modules
                    .iter()
                    .any(|o| o.len() == m.len() + 1 && o.starts_with(m))
            })
            .cloned()
            .collect()
    }

    /// The module file a path names, from code in `here` (the file's module plus inline
    /// modules); `None` for paths outside the crate. `depth` bounds re-exports followed.
    fn resolve(
        &self,
        file: &[String],
        here: &[String],
        path: &[String],
        depth: usize,
    ) -> Option<Vec<String>> {
        if depth > 8 {
            return None;
        }
        let is_main = file.first().map(String::as_str) == Some("main");
        let first = path.first()?.as_str();
        let (base, rest): (Vec<String>, &[String]) = match first {
            "crate" if !is_main => (Vec::new(), &path[1..]),
            "swiftdrop" if is_main => (Vec::new(), &path[1..]),
            "super" | "self" => {
                let mut base = here.to_vec();
                let steps = path
                    .iter()
                    .take_while(|s| *s == "super" || *s == "self")
                    .count();
                for step in &path[..steps] {
                    if step == "super" {
                        base.pop()?;
                    }
                }
                (base, &path[steps..])
            }
            _ => {
                if self.modules.contains(&[here, &path[..1]].concat()) {
                    (here.to_vec(), path)
                } else {
                    let named = self.use_name(file, here, first, depth)?;
                    let target = self.resolve(file, &named.scope, &named.path, depth + 1)?;
                    (target, &path[1..])
                }
            }
        };
        Some(self.walk(base, rest, depth))
    }

    /// From module `module`, the module that `rest` leads to: into child modules, and through
    /// names a `use` of that module brought in (re-exports, private imports children see).
    fn walk(&self, mut module: Vec<String>, rest: &[String], depth: usize) -> Vec<String> {
        for (i, segment) in rest.iter().enumerate() {
            let child = [module.clone(), vec![segment.clone()]].concat();
            if self.modules.contains(&child) {
                module = child;
                continue;
            }
            if depth <= 8 {
                let named = self.uses.get(&module).and_then(|names| {
                    names
                        .iter()
                        .find(|n| !n.glob && n.alias == *segment && n.scope == module)
                });
                if let Some(named) = named {
                    if let Some(target) =
                        self.resolve(&module, &named.scope, &named.path, depth + 1)
                    {
                        if target != module {
                            return self.walk(target, &rest[i + 1..], depth + 1);
                        }
                    }
                }
            }
            break;
        }
        module
    }

    /// What `name` stands for in `here` of `file`: a `use` of that scope (or an outer one of
    /// the same file), or a child module of a module glob-imported there.
    fn use_name(
        &self,
        file: &[String],
        here: &[String],
        name: &str,
        depth: usize,
    ) -> Option<UseName> {
        let names = self.uses.get(file)?;
        let visible = |n: &&UseName| here.starts_with(&n.scope);
        if let Some(named) = names
            .iter()
            .filter(visible)
            .find(|n| !n.glob && n.alias == name)
        {
            return Some(named.clone());
        }
        for glob in names.iter().filter(visible).filter(|n| n.glob) {
            let Some(module) = self.resolve(file, &glob.scope, &glob.path, depth + 1) else {
                continue;
            };
            let child = [module.clone(), vec![name.to_string()]].concat();
            if self.modules.contains(&child) {
                return Some(UseName {
                    alias: name.to_string(),
                    path: [vec!["crate".to_string()], child].concat(),
                    scope: glob.scope.clone(),
                    glob: false,
                });
            }
        }
        None
    }
}

/// A circle's heading and, under it, the lines that make each of its steps.
fn describe<N: Ord>(
    heading: &str,
    circle: &[N],
    edges: &BTreeMap<N, BTreeMap<N, Vec<&Import>>>,
) -> String {
    let mut lines = vec![heading.to_string()];
    for pair in circle.windows(2) {
        let imports = &edges[&pair[0]][&pair[1]];
        for import in imports.iter().take(3) {
            lines.push(format!("    {}: {}", import.place, import.path));
        }
        if imports.len() > 3 {
            lines.push(format!("    ... and {} more", imports.len() - 3));
        }
    }
    lines.join("\n")
}

fn collect_files(dir: &Path, files: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            collect_files(&path, files);
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
}

fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let relative = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = relative
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") || parts == ["lib"] {
        parts.pop();
    }
    parts
}

/// `text` with comments, string and character literals blanked out (newlines kept, so that
/// offsets still give line numbers).
fn code_only(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = bytes.to_vec();
    let blank = |out: &mut Vec<u8>, from: usize, to: usize| {
        for b in &mut out[from..to.min(bytes.len())] {
            if *b != b'\n' {
                *b = b' ';
            }
        }
    };
    let ident = |i: usize| i > 0 && is_ident(bytes[i - 1]);
    let mut i = 0;
    while i < bytes.len() {
        let rest = &bytes[i..];
        if rest.starts_with(b"//") {
            let end = rest
                .iter()
                .position(|&b| b == b'\n')
                .map_or(bytes.len(), |n| i + n);
            blank(&mut out, i, end);
            i = end;
        } else if rest.starts_with(b"/*") {
            let (mut depth, mut j) = (0, i);
            while j < bytes.len() {
                if bytes[j..].starts_with(b"/*") {
                    depth += 1;
                    j += 2;
                } else if bytes[j..].starts_with(b"*/") {
                    depth -= 1;
                    j += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    j += 1;
                }
            }
            blank(&mut out, i, j);
            i = j;
        } else if let Some((open, hashes)) = raw_string_opening(rest).filter(|_| !ident(i)) {
            let close: Vec<u8> = std::iter::once(b'"')
                .chain(std::iter::repeat_n(b'#', hashes))
                .collect();
            let body = i + open;
            let end = bytes[body..]
                .windows(close.len())
                .position(|w| w == close.as_slice())
                .map_or(bytes.len(), |n| body + n + close.len());
            blank(&mut out, i, end);
            i = end;
        } else if bytes[i] == b'"' || (!ident(i) && rest.starts_with(b"b\"")) {
            let mut j = i + if bytes[i] == b'b' { 2 } else { 1 };
            while j < bytes.len() && bytes[j] != b'"' {
                j += if bytes[j] == b'\\' { 2 } else { 1 };
            }
            blank(&mut out, i, j + 1);
            i = j + 1;
        } else if bytes[i] == b'\'' {
            match char_literal_len(&text[i..]) {
                Some(len) => {
                    blank(&mut out, i, i + len);
                    i += len;
                }
                // A lifetime ('a), not a literal.
                None => i += 1,
            }
        } else {
            i += 1;
        }
    }
    String::from_utf8(out).expect("only ASCII was blanked")
}

/// The length of the character literal `text` begins with ('x', '\'', '\n', '\u{1F600}'),
/// or `None` when it begins a lifetime.
fn char_literal_len(text: &str) -> Option<usize> {
    let mut chars = text.char_indices().skip(1);
    let (_, first) = chars.next()?;
    let end = if first == '\\' {
        let (at, escaped) = chars.next()?;
        if escaped == 'u' {
            text[at..].find('}').map(|n| at + n + 1)?
        } else {
            at + escaped.len_utf8()
        }
    } else {
        1 + first.len_utf8()
    };
    text[end..].starts_with('\'').then_some(end + 1)
}

/// For `r"`, `r#"`, `br##"` ...: the length of the opening and the number of `#`.
fn raw_string_opening(rest: &[u8]) -> Option<(usize, usize)> {
    let start = if rest.starts_with(b"br") {
        2
    } else if rest.starts_with(b"r") {
        1
    } else {
        return None;
    };
    let hashes = rest[start..].iter().take_while(|&&b| b == b'#').count();
    (rest.get(start + hashes) == Some(&b'"')).then_some((start + hashes + 1, hashes))
}

/// The inline modules (`mod tests { ... }`) that enclose `offset`, outermost first.
fn inline_modules_at(code: &str, offset: usize) -> Vec<String> {
    let mut open: Vec<(String, usize)> = Vec::new();
    let mut depth = 0;
    let bytes = code.as_bytes();
    for i in 0..offset {
        match bytes[i] {
            b'{' => depth += 1,
            b'}' => {
                if open.last().is_some_and(|(_, d)| *d == depth) {
                    open.pop();
                }
                depth -= 1;
            }
            b'm' if code[i..].starts_with("mod ") && (i == 0 || !is_ident(bytes[i - 1])) => {
                let after = code[i + 4..].trim_start();
                let name: String = after.chars().take_while(|c| is_ident(*c as u8)).collect();
                if after[name.len()..].trim_start().starts_with('{') {
                    // The depth of the module's own brace, counted when it is met.
                    open.push((name, depth + 1));
                }
            }
            _ => {}
        }
    }
    open.into_iter().map(|(name, _)| name).collect()
}

fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// Whether a path may begin at `i`: not inside an identifier or after `::`.
fn path_start(code: &str, i: usize) -> bool {
    let bytes = code.as_bytes();
    is_ident(bytes[i])
        && (i == 0 || !is_ident(bytes[i - 1]))
        && !code[..i].trim_end().ends_with("::")
}

/// Every `use` declaration of `code` (a file of `module`), its trees expanded, with where
/// it is.
fn use_declarations(code: &str, module: &[String]) -> Vec<(usize, UseName)> {
    let mut found = Vec::new();
    for (i, _) in code.match_indices("use") {
        let keyword = path_start(code, i)
            && code[i + 3..].starts_with(|c: char| c.is_whitespace() || c == '{');
        if !keyword {
            continue;
        }
        let end = code[i..].find(';').map_or(code.len(), |n| i + n);
        let scope = [module.to_vec(), inline_modules_at(code, i)].concat();
        for (path, alias, glob) in use_tree(&code[i + 3..end], &[]) {
            found.push((
                i,
                UseName {
                    alias,
                    path,
                    scope: scope.clone(),
                    glob,
                },
            ));
        }
    }
    found
}

/// Paths of two or more segments outside `use` declarations, with where each begins.
fn expression_paths(code: &str) -> Vec<(usize, Vec<String>)> {
    let bytes = code.as_bytes();
    let mut found = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if !path_start(code, i) {
            i += 1;
            continue;
        }
        if code[i..].starts_with("use")
            && code[i + 3..].starts_with(|c: char| c.is_whitespace() || c == '{')
        {
            i = code[i..].find(';').map_or(code.len(), |n| i + n);
            continue;
        }
        let mut segments = Vec::new();
        let mut j = i;
        loop {
            let start = j;
            while j < bytes.len() && is_ident(bytes[j]) {
                j += 1;
            }
            if start == j {
                break;
            }
            segments.push(code[start..j].to_string());
            let rest = code[j..].trim_start();
            let Some(after) = rest.strip_prefix("::") else {
                break;
            };
            j = code.len() - after.trim_start().len();
        }
        if segments.len() > 1 {
            found.push((i, segments));
        }
        i = j.max(i + 1);
    }
    found
}

/// The leaves of a `use` tree such as `crate::{a::B as C, c::{self, D}, e::*}`: each path
/// from its root, the name it brings in, and whether it is a glob.
fn use_tree(tree: &str, prefix: &[String]) -> Vec<(Vec<String>, String, bool)> {
    let mut items = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in tree.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(&tree[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items.push(&tree[start..]);
    let mut leaves = Vec::new();
    for item in items.into_iter().map(str::trim).filter(|s| !s.is_empty()) {
        if let Some(brace) = item.find('{') {
            let head = segments(item[..brace].trim_end().trim_end_matches("::"));
            let inner = &item[brace + 1..item.rfind('}').unwrap_or(item.len())];
            leaves.extend(use_tree(inner, &[prefix, &head].concat()));
            continue;
        }
        let (path, alias) = match item.split_once(" as ") {
            Some((path, alias)) => (path, Some(alias.trim().to_string())),
            None => (item, None),
        };
        let mut path = [prefix, &segments(path)].concat();
        let glob = path.last().is_some_and(|s| s == "*");
        if glob || (path.last().is_some_and(|s| s == "self") && path.len() > 1) {
            path.pop();
        }
        let alias = alias.unwrap_or_else(|| path.last().cloned().unwrap_or_default());
        leaves.push((path, alias, glob));
    }
    leaves
}

fn segments(path: &str) -> Vec<String> {
    path.split("::")
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}
