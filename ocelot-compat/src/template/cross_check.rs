//! Property tests: the VM-based matcher, extractor and header templates against
//! the `regex` crate running Ocelot's own patterns from [`super::dotnet_regex`]
//! on generated templates and requests, plus a no-panic sweep over random input.
//!
//! Test-only; lives apart because it exercises every template module at once.

use super::dotnet_regex::{
    header_template_literal_metachars, ocelot_header_regex, ocelot_upstream_regex,
    path_template_literal_metachars,
};
use super::placeholders::placeholder_ranges;
use super::placeholders::Placeholders;
use super::{DownstreamTemplate, HeaderTemplate, UpstreamTemplate};

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[(self.next() % items.len() as u64) as usize]
    }
}

fn random_template(rng: &mut Rng) -> String {
    const SEGMENTS: &[&str] = &[
        "api",
        "API",
        "v1",
        "users",
        "{P}",
        "{P}",
        "{P}",
        "x{P}",
        "{P}-{P}",
        "{P}_abcd",
        ".",
        "a.b",
        "",
        ".well-known",
        "v{P}",
        "files",
    ];
    const QUERIES: &[&str] = &[
        "",
        "",
        "",
        "?q={P}",
        "?{P}",
        "?a={P}&b={P}",
        "?a=1",
        "?{P}&{P}",
    ];
    let mut t = String::new();
    let n = rng.next() % 4;
    for _ in 0..=n {
        t.push('/');
        t.push_str(rng.pick::<&str>(SEGMENTS));
    }
    if rng.next().is_multiple_of(4) {
        t.push('/');
    }
    t.push_str(rng.pick::<&str>(QUERIES));
    let mut k = 0;
    while let Some(i) = t.find("{P}") {
        t.replace_range(i..i + 3, &format!("{{p{k}}}"));
        k += 1;
    }
    t
}

fn random_request(rng: &mut Rng) -> (String, Option<String>) {
    const SEGMENTS: &[&str] = &[
        "api",
        "Api",
        "v1",
        "V1",
        "users",
        "1",
        "1-2",
        "7_abcd",
        "x9",
        "",
        "a.b",
        "aXb",
        "a",
        "b",
        ".well-known",
        "files",
        "-",
        "a&b",
        "é",
    ];
    const QUERIES: &[Option<&str>] = &[
        None,
        None,
        Some(""),
        Some("q=1"),
        Some("a=1&b=2"),
        Some("b=2&a=1"),
        Some("q="),
        Some("x&y"),
    ];
    let mut p = String::new();
    let n = rng.next() % 5;
    for _ in 0..=n {
        p.push('/');
        p.push_str(rng.pick::<&str>(SEGMENTS));
    }
    (p, rng.pick(QUERIES).map(str::to_string))
}

/// A request made from the template itself (placeholders filled in, sometimes
/// mangled), so that a good share of the cross-checks are near-hits.
fn derived_request(rng: &mut Rng, template: &str) -> (String, Option<String>) {
    const VALUES: &[&str] = &["1", "", "a/b", "x-y", "7_abcd", "Q", "a&b", "v.1", "é"];
    let mut s = template.to_string();
    while let Some((a, b)) = s.find('{').zip(s.find('}')) {
        if b < a {
            break;
        }
        s.replace_range(a..=b, rng.pick::<&str>(VALUES));
    }
    match rng.next() % 6 {
        0 => s = s.to_uppercase(),
        1 => {
            if s.ends_with('/') {
                s.pop();
            } else {
                s.push('/');
            }
        }
        2 => s = s.replacen('/', "//", 1),
        _ => {}
    }
    let (p, q) = match s.split_once('?') {
        Some((p, q)) => (p.to_string(), Some(q.to_string())),
        None => (s, None),
    };
    let p = if p.starts_with('/') {
        p
    } else {
        format!("/{p}")
    };
    (p, q)
}

fn request(rng: &mut Rng, template: &str) -> (String, Option<String>) {
    if rng.next().is_multiple_of(2) {
        derived_request(rng, template)
    } else {
        random_request(rng)
    }
}

fn dotnet_to_rust(pattern: &str) -> regex::Regex {
    regex::Regex::new(&format!("(?s){pattern}")).unwrap()
}

#[test]
fn matcher_agrees_with_ocelot_regex() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut checked = 0;
    let mut positives = 0;
    for _ in 0..600 {
        let t = random_template(&mut rng);
        for cs in [false, true] {
            let ocelot = ocelot_upstream_regex(&t, cs);
            let re = dotnet_to_rust(&ocelot.pattern);
            let ours = UpstreamTemplate::new(&t, cs);
            assert_eq!(ours.contains_query(), ocelot.contains_query, "{t}");
            for _ in 0..40 {
                let (path, query) = request(&mut rng, &t);
                let subject = match (&query, ocelot.contains_query) {
                    (Some(q), true) => format!("{path}?{q}"),
                    _ => path.clone(),
                };
                positives += usize::from(re.is_match(&subject));
                assert_eq!(
                    ours.is_match(&path, query.as_deref()),
                    re.is_match(&subject),
                    "template {t} (cs={cs}) regex {} subject {subject}",
                    ocelot.pattern
                );
                checked += 1;
            }
        }
    }
    assert!(checked > 40_000);
    // Keep the generators honest: plenty of both verdicts.
    assert!(positives > checked / 10 && positives < checked * 9 / 10);
}

/// `UrlPathPlaceholderNameAndValueFinder.Find`, spelled out with the regex crate.
fn reference_extract(template: &str, path: &str, query: Option<&str>) -> Vec<(String, String)> {
    let catch_all_query = regex::Regex::new(r"^[^{}]*\?\{(.*?)\}$").unwrap();
    if let Some(c) = catch_all_query.captures(template) {
        return vec![(format!("{{{}}}", &c[1]), String::new())];
    }
    let mut escaped = String::from("^(?i)");
    let mut names = Vec::new();
    let ranges = placeholder_ranges(template);
    let mut i = 0;
    while i < template.len() {
        if let Some(&(s, e)) = ranges.iter().find(|r| r.0 == i) {
            let last = names.len() + 1 == ranges.len();
            let class = if last { "[^&]*" } else { "[^/|&]*" };
            escaped.push_str(&format!("(?<g{}>{class})", names.len()));
            names.push(template[s..e].to_string());
            i = e;
        } else {
            let c = template[i..].chars().next().unwrap();
            escaped.push_str(&regex::escape(&c.to_string()));
            i += c.len_utf8();
        }
    }
    let re = regex::Regex::new(&escaped).unwrap();
    let query = query.map(|q| format!("?{q}")).unwrap_or_default();
    let tested = if !query.is_empty() && !template.contains('?') {
        path.to_string()
    } else {
        format!("{path}{query}")
    };
    let collect = |caps: regex::Captures<'_>| {
        names
            .iter()
            .enumerate()
            .map(|(k, n)| (n.clone(), caps[format!("g{k}").as_str()].to_string()))
            .collect::<Vec<_>>()
    };
    if let Some(c) = re.captures(&tested) {
        if !names.is_empty() {
            return collect(c);
        }
    }
    let catch_all_path = regex::Regex::new(r"^[^{}]*\{(.*?)\}/?$").unwrap();
    if !catch_all_path.is_match(template) || template.contains('?') {
        return Vec::new();
    }
    re.captures(&format!("{tested}/"))
        .map(collect)
        .unwrap_or_default()
}

#[test]
fn extraction_agrees_with_ocelot_regex() {
    let mut rng = Rng(0xD1B5_4A32_D192_ED03);
    for _ in 0..600 {
        let t = random_template(&mut rng);
        let ours = UpstreamTemplate::new(&t, false);
        for _ in 0..30 {
            let (path, query) = request(&mut rng, &t);
            let mut got = Placeholders::new();
            ours.extract(&path, query.as_deref(), &mut got);
            let got: Vec<(String, String)> = got
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect();
            assert_eq!(
                got,
                reference_extract(&t, &path, query.as_deref()),
                "{t} {path} {query:?}"
            );
        }
    }
}

#[test]
fn header_matching_agrees_with_ocelot_regex() {
    const PARTS: &[&str] = &[
        "PL",
        "pl",
        "-",
        ".",
        "v1",
        "{header:a}",
        "{header:b}",
        "x",
        ",",
        "_",
    ];
    const VALUES: &[&str] = &["PL", "pl", "-", "v1", "x", ",", "_", "UK", ".", "é"];
    let mut rng = Rng(0x1234_5678_9ABC_DEF1);
    for _ in 0..400 {
        let mut t = String::new();
        for _ in 0..=(rng.next() % 4) {
            t.push_str(rng.pick::<&str>(PARTS));
        }
        if t.matches("{header:a}").count() > 1 || t.matches("{header:b}").count() > 1 {
            continue;
        }
        for cs in [false, true] {
            let re = dotnet_to_rust(&ocelot_header_regex(&t, cs));
            let ours = HeaderTemplate::new("h", &t, cs);
            for _ in 0..30 {
                let mut v = String::new();
                for _ in 0..(rng.next() % 5) {
                    v.push_str(rng.pick::<&str>(VALUES));
                }
                assert_eq!(ours.is_match(&v), re.is_match(&v), "{t} {v}");
                if let Some(c) = re.captures(&v) {
                    let mut got = Placeholders::new();
                    ours.extract(&v, &mut got);
                    for (name, value) in got.iter() {
                        let key = name.trim_matches(['{', '}']);
                        assert_eq!(value, &c[key], "{t} {v}");
                    }
                }
            }
        }
    }
}

#[test]
fn never_panics_on_random_input() {
    const CHARS: &[char] = &[
        '/', '{', '}', '?', '&', '=', '.', 'a', 'B', '%', '|', 'é', '\\', '(', '*', '$', '+', ' ',
    ];
    let mut rng = Rng(0xABCD_EF01_2345_6789);
    let random = |rng: &mut Rng, n: u64| -> String {
        (0..rng.next() % n).map(|_| *rng.pick(CHARS)).collect()
    };
    for _ in 0..3000 {
        let t = random(&mut rng, 16);
        let path = random(&mut rng, 16);
        let q = random(&mut rng, 10);
        let up = UpstreamTemplate::new(&t, rng.next().is_multiple_of(2));
        let _ = up.is_match(&path, Some(&q));
        let _ = up.is_match(&path, None);
        let mut out = Placeholders::new();
        up.extract(&path, Some(&q), &mut out);
        let h = HeaderTemplate::new("h", &t, false);
        let _ = h.is_match(&path);
        h.extract(&path, &mut out);
        let d = DownstreamTemplate::parse(&t);
        let r = d.render(&out, &path, Some(&q));
        assert!(r.path.starts_with('/'));
        let _ = ocelot_upstream_regex(&t, false);
        let _ = path_template_literal_metachars(&t);
        let _ = header_template_literal_metachars(&t);
    }
}
