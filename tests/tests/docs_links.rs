//! Every link in the repository's Markdown resolves inside the repository.
//!
//! A fresh clone is all a reader has: a link to `../shared/PROTOCOL.md`, to a
//! file that was renamed, or to a heading that no longer exists is a dead end.
//! This test walks every `*.md` (outside `target/`, `node_modules/`, hidden
//! directories and `fuzz/corpus/`), extracts inline links, images and reference
//! definitions outside code, and checks that each relative link names a file or
//! directory of the repository without escaping its root, and that each
//! `#anchor` names a heading of the target document (GitHub's slugs) or an
//! explicit `id`/`name` anchor. External links (`https:`, `mailto:` ...) are not
//! fetched.
#![forbid(unsafe_code)]

use std::collections::{BTreeSet, HashMap};
use std::path::{Component, Path, PathBuf};

use anyhow::{Context, Result};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Directories never walked: build output, dependencies, VCS and tool state,
/// and the fuzz corpus (generated inputs).
fn skipped_dir(rel: &Path) -> bool {
    let name = rel.file_name().and_then(|n| n.to_str()).unwrap_or("");
    name.starts_with('.')
        || matches!(name, "target" | "node_modules" | "__pycache__" | "venv")
        || rel == Path::new("fuzz/corpus")
}

fn markdown_files(root: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for entry in std::fs::read_dir(root.join(&rel))? {
            let entry = entry?;
            let child = rel.join(entry.file_name());
            let ty = entry.file_type()?;
            if ty.is_dir() {
                if !skipped_dir(&child) {
                    stack.push(child);
                }
            } else if child.extension().is_some_and(|e| e == "md") {
                out.push(child);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The lines of a document that are not inside fenced code blocks, with their
/// 1-based line numbers.
fn prose_lines(text: &str) -> Vec<(usize, &str)> {
    let mut out = Vec::new();
    let mut fence: Option<(char, usize)> = None;
    for (i, line) in text.lines().enumerate() {
        let t = line.trim_start();
        let run = |c: char| t.chars().take_while(|x| *x == c).count();
        match fence {
            Some((c, n)) => {
                if run(c) >= n && t.trim_end().chars().all(|x| x == c) {
                    fence = None;
                }
            }
            None => {
                if line.len() - t.len() < 4 {
                    for c in ['`', '~'] {
                        let n = run(c);
                        if n >= 3 {
                            fence = Some((c, n));
                        }
                    }
                }
                if fence.is_none() {
                    out.push((i + 1, line));
                }
            }
        }
    }
    out
}

/// Removes inline code spans (their content is not Markdown).
fn strip_code_spans(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    while let Some(start) = rest.find('`') {
        out.push_str(&rest[..start]);
        let ticks = rest[start..].chars().take_while(|c| *c == '`').count();
        let after = &rest[start + ticks..];
        let closing = "`".repeat(ticks);
        match after.find(&closing) {
            Some(end) => rest = &after[end + ticks..],
            None => {
                out.push_str(&rest[start..start + ticks]);
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Link destinations of one line: `[text](dest)`, `![alt](dest)` and
/// reference definitions `[label]: dest`.
fn links_in(line: &str) -> Vec<String> {
    let line = strip_code_spans(line);
    let mut out = Vec::new();
    let t = line.trim_start();
    if t.starts_with('[') {
        if let Some(close) = t.find("]:") {
            let dest = t[close + 2..].split_whitespace().next().unwrap_or("");
            out.push(dest.trim_start_matches('<').trim_end_matches('>').into());
            return out;
        }
    }
    let bytes = line.as_bytes();
    let mut i = 0;
    while let Some(pos) = line[i..].find("](") {
        let open = i + pos + 2;
        // The destination runs to the matching `)` (balanced parentheses).
        let mut depth = 1;
        let mut end = open;
        while end < bytes.len() {
            match bytes[end] {
                b'(' => depth += 1,
                b')' => {
                    depth -= 1;
                    if depth == 0 {
                        break;
                    }
                }
                _ => {}
            }
            end += 1;
        }
        let raw = line[open..end.min(line.len())].trim();
        let dest = if let Some(stripped) = raw.strip_prefix('<') {
            stripped.split('>').next().unwrap_or("")
        } else {
            raw.split_whitespace().next().unwrap_or("")
        };
        out.push(dest.to_string());
        i = end.min(line.len());
    }
    out
}

/// GitHub's anchor for a heading text.
fn slug(heading: &str) -> String {
    // Rendered text: links become their text, code and emphasis marks vanish.
    let mut text = String::new();
    let mut rest = heading;
    while let Some(open) = rest.find('[') {
        let Some(mid) = rest[open..].find("](") else {
            break;
        };
        let Some(close) = rest[open + mid..].find(')') else {
            break;
        };
        text.push_str(&rest[..open]);
        text.push_str(&rest[open + 1..open + mid]);
        rest = &rest[open + mid + close + 1..];
    }
    text.push_str(rest);
    text.trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// Every anchor a document defines: heading slugs (duplicates get `-1`, `-2`,
/// as on GitHub) and explicit `id="..."` / `name="..."` attributes.
fn anchors(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (_, line) in prose_lines(text) {
        let t = line.trim_start();
        let hashes = t.chars().take_while(|c| *c == '#').count();
        if (1..=6).contains(&hashes) && t[hashes..].starts_with([' ', '\t']) {
            let title = t[hashes..].trim().trim_end_matches('#').trim_end();
            let base = slug(title);
            let n = seen.entry(base.clone()).or_insert(0);
            out.insert(if *n == 0 {
                base.clone()
            } else {
                format!("{base}-{n}")
            });
            *n += 1;
        }
        for attr in ["id=\"", "name=\""] {
            let mut rest = line;
            while let Some(p) = rest.find(attr) {
                let after = &rest[p + attr.len()..];
                if let Some(end) = after.find('"') {
                    out.insert(after[..end].to_string());
                }
                rest = after;
            }
        }
    }
    out
}

fn is_external(dest: &str) -> bool {
    let scheme: String = dest
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        .collect();
    !scheme.is_empty() && dest[scheme.len()..].starts_with(':')
}

/// `base` joined with `rel`, normalised without touching the file system;
/// `None` if it climbs above the repository root.
fn resolve(base_dir: &Path, rel: &str) -> Option<PathBuf> {
    let mut parts: Vec<String> = Vec::new();
    for c in base_dir.join(rel).components() {
        match c {
            Component::Normal(p) => parts.push(p.to_string_lossy().into_owned()),
            Component::ParentDir => {
                parts.pop()?;
            }
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(parts.iter().collect())
}

/// Percent-decoding of a link path (`%20` and friends).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
            if let Ok(v) = u8::from_str_radix(hex, 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Every broken link of the repository, as `file:line: link: why`.
fn broken_links(root: &Path) -> Result<Vec<String>> {
    let files = markdown_files(root)?;
    let mut texts = HashMap::new();
    for f in &files {
        let text = std::fs::read_to_string(root.join(f))
            .with_context(|| format!("reading {}", f.display()))?;
        texts.insert(f.clone(), text);
    }
    let mut problems = Vec::new();
    for f in &files {
        let dir = f.parent().unwrap_or(Path::new(""));
        for (n, line) in prose_lines(&texts[f]) {
            for dest in links_in(line) {
                if dest.is_empty() || is_external(&dest) {
                    continue;
                }
                let mut report = |why: String| {
                    problems.push(format!("{}:{n}: ({dest}): {why}", f.display()));
                };
                let (path, anchor) = match dest.split_once('#') {
                    Some((p, a)) => (p, Some(a)),
                    None => (dest.as_str(), None),
                };
                let path = percent_decode(path.split('?').next().unwrap_or(""));
                if path.starts_with('/') {
                    report("absolute path: link relative to this file".into());
                    continue;
                }
                let target = if path.is_empty() {
                    f.clone()
                } else {
                    match resolve(dir, &path) {
                        Some(t) => t,
                        None => {
                            report("points outside the repository".into());
                            continue;
                        }
                    }
                };
                if !root.join(&target).exists() {
                    report(format!("{} does not exist", target.display()));
                    continue;
                }
                let Some(anchor) = anchor else { continue };
                if target.extension().is_none_or(|e| e != "md") {
                    continue; // anchors into code files are line refs; not checked
                }
                let text = match texts.get(&target) {
                    Some(t) => t.clone(),
                    None => std::fs::read_to_string(root.join(&target))?,
                };
                if !anchors(&text).contains(&percent_decode(anchor)) {
                    report(format!("no heading #{anchor} in {}", target.display()));
                }
            }
        }
    }
    Ok(problems)
}

/// Documents named in prose (`DESIGN.md`, `shared/...`) that a clone does not
/// have: a reader told to look there cannot.
fn missing_mentions(root: &Path) -> Result<Vec<String>> {
    let files = markdown_files(root)?;
    let names: BTreeSet<String> = files
        .iter()
        .filter_map(|f| f.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    let mut problems = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(root.join(f))?;
        let dir = f.parent().unwrap_or(Path::new(""));
        for (n, line) in prose_lines(&text) {
            for word in
                line.split(|c: char| !(c.is_alphanumeric() || matches!(c, '.' | '/' | '_' | '-')))
            {
                let word = word.trim_end_matches('.');
                if word.contains("shared/") {
                    problems.push(format!(
                        "{}:{n}: mentions `{word}` (not in a clone)",
                        f.display()
                    ));
                    continue;
                }
                if !word.ends_with(".md") || word.contains("://") {
                    continue;
                }
                let exists = names.contains(word.rsplit('/').next().unwrap_or(word))
                    && (!word.contains('/')
                        || root.join(word).exists()
                        || resolve(dir, word).is_some_and(|p| root.join(p).exists()));
                if !exists {
                    problems.push(format!(
                        "{}:{n}: mentions {word}, which the repository does not have",
                        f.display()
                    ));
                }
            }
        }
    }
    Ok(problems)
}

#[test]
fn documents_mention_only_files_a_clone_has() -> Result<()> {
    let problems = missing_mentions(&repo_root())?;
    assert!(
        problems.is_empty(),
        "the repository's Markdown refers to files outside it:\n{}",
        problems.join("\n")
    );
    Ok(())
}

#[test]
fn every_markdown_link_resolves_inside_the_repository() -> Result<()> {
    let root = repo_root();
    let files = markdown_files(&root)?;
    assert!(
        files.iter().any(|f| f == Path::new("README.md")),
        "the walk must see README.md (found {files:?})"
    );
    let problems = broken_links(&root)?;
    assert!(
        problems.is_empty(),
        "broken links in the repository's Markdown:\n{}",
        problems.join("\n")
    );
    Ok(())
}

// ---- the checker's own rules ----

#[test]
fn slugs_follow_github() {
    assert_eq!(slug("Transport and framing"), "transport-and-framing");
    assert_eq!(slug("`cache.get` — hit"), "cacheget--hit");
    assert_eq!(slug("Ops (v1)"), "ops-v1");
    assert_eq!(slug("See [PROTOCOL.md](PROTOCOL.md)!"), "see-protocolmd");
    assert_eq!(slug("snake_case name"), "snake_case-name");
    let a = anchors("# A\n## A\n```\n# not a heading\n```\n<a id=\"x\"></a>\n");
    assert_eq!(a, ["a", "a-1", "x"].iter().map(|s| s.to_string()).collect());
}

#[test]
fn links_are_found_outside_code_only() {
    assert_eq!(
        links_in("see [p](PROTOCOL.md#ops) and ![i](a/b.png \"t\") and `[x](no.md)`"),
        vec!["PROTOCOL.md#ops", "a/b.png"]
    );
    assert_eq!(links_in("[ref]: ../x.md"), vec!["../x.md"]);
    assert_eq!(links_in("[f](f(x).md)"), vec!["f(x).md"]);
    let lines: Vec<_> = prose_lines("a\n```rust\n[x](y)\n```\nb\n")
        .into_iter()
        .map(|(_, l)| l)
        .collect();
    assert_eq!(lines, vec!["a", "b"]);
}

#[test]
fn escaping_links_and_missing_targets_are_reported() -> Result<()> {
    let dir = tempfile::tempdir()?;
    std::fs::write(
        dir.path().join("README.md"),
        "# Top\n[a](../shared/PROTOCOL.md) [b](missing.md) [c](#top) [d](#nope) [e](sub/X.md#x-y)\n",
    )?;
    std::fs::create_dir(dir.path().join("sub"))?;
    std::fs::write(
        dir.path().join("sub/X.md"),
        "## X y\n[up](../README.md#top)\n",
    )?;
    let problems = broken_links(dir.path())?;
    assert_eq!(problems.len(), 3, "{problems:#?}");
    assert!(problems[0].contains("outside the repository"));
    assert!(problems[1].contains("missing.md does not exist"));
    assert!(problems[2].contains("no heading #nope"));

    std::fs::write(
        dir.path().join("sub/Y.md"),
        "See DESIGN.md (in `shared/`), X.md and sub/X.md.\n",
    )?;
    let mentions = missing_mentions(dir.path())?;
    let in_y: Vec<_> = mentions
        .iter()
        .filter(|m| m.starts_with("sub/Y.md"))
        .collect();
    assert_eq!(in_y.len(), 2, "{mentions:#?}");
    assert!(in_y[0].contains("DESIGN.md"));
    assert!(in_y[1].contains("shared/"));
    // Link destinations are mentions too.
    assert!(mentions.iter().any(|m| m.contains("missing.md")));
    Ok(())
}
