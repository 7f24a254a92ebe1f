//! Normalization per mode on one shared table, rejections, the known bypasses against a
//! DENY, idempotence, path patterns and templates, hosts, methods, and a seeded fuzz.
use super::*;

const MODES: [Normalization; 4] =
    [Normalization::None, Normalization::Base, Normalization::MergeSlashes, Normalization::DecodeAndMergeSlashes];

/// Input, then the path per mode in `MODES` order: None, Base, MergeSlashes,
/// DecodeAndMergeSlashes. `""` means rejected.
const TABLE: &[(&str, [&str; 4])] = &[
    ("/", ["/", "/", "/", "/"]),
    ("/a/b", ["/a/b", "/a/b", "/a/b", "/a/b"]),
    ("//admin", ["//admin", "//admin", "/admin", "/admin"]),
    ("/./admin", ["/./admin", "/admin", "/admin", "/admin"]),
    ("/foo/../admin", ["/foo/../admin", "/admin", "/admin", "/admin"]),
    ("/%61dmin", ["/%61dmin", "/admin", "/admin", "/admin"]),
    ("/admin/", ["/admin/", "/admin/", "/admin/", "/admin/"]),
    ("/ADMIN", ["/ADMIN", "/ADMIN", "/ADMIN", "/ADMIN"]),
    ("/foo%2F..%2Fadmin", ["/foo%2F..%2Fadmin", "/foo%2F..%2Fadmin", "/foo%2F..%2Fadmin", "/admin"]),
    ("/foo%2f..%2fadmin", ["/foo%2f..%2fadmin", "/foo%2F..%2Fadmin", "/foo%2F..%2Fadmin", "/admin"]),
    ("/admin;jsessionid=1", ["/admin;jsessionid=1"; 4]),
    ("/admin?x", ["/admin"; 4]),
    ("/admin#x", ["/admin"; 4]),
    ("\\admin", ["", "/admin", "/admin", "/admin"]),
    ("/foo/..%5Cadmin", ["/foo/..%5Cadmin", "/foo/..%5Cadmin", "/foo/..%5Cadmin", "/admin"]),
    ("/foo/..%5cadmin", ["/foo/..%5cadmin", "/foo/..%5Cadmin", "/foo/..%5Cadmin", "/admin"]),
    ("/%2e%2e/admin", ["/%2e%2e/admin", "/admin", "/admin", "/admin"]),
    ("/.%2E/admin", ["/.%2E/admin", "/admin", "/admin", "/admin"]),
    ("/a/./b/../c", ["/a/./b/../c", "/a/c", "/a/c", "/a/c"]),
    ("/..", ["/..", "/", "/", "/"]),
    ("/a/..", ["/a/..", "/", "/", "/"]),
    ("/a/.", ["/a/.", "/a/", "/a/", "/a/"]),
    ("/a/%2e", ["/a/%2e", "/a/", "/a/", "/a/"]),
    ("/a/b/../../../c", ["/a/b/../../../c", "/c", "/c", "/c"]),
    // Dots before slashes, as Envoy: the empty segment is what `..` removes.
    ("/a//../b", ["/a//../b", "/a/b", "/a/b", "/a/b"]),
    ("///a///b//", ["///a///b//", "///a///b//", "/a/b/", "/a/b/"]),
    ("/...", ["/..."; 4]),
    ("/a%2fb", ["/a%2fb", "/a%2Fb", "/a%2Fb", "/a/b"]),
    ("/a%5cb", ["/a%5cb", "/a%5Cb", "/a%5Cb", "/a/b"]),
    ("/a\\b", ["/a\\b", "/a/b", "/a/b", "/a/b"]),
    ("/a\\\\b", ["/a\\\\b", "/a//b", "/a/b", "/a/b"]),
    ("/%7euser", ["/%7euser", "/~user", "/~user", "/~user"]),
    ("/%41%2D%5f%30", ["/%41%2D%5f%30", "/A-_0", "/A-_0", "/A-_0"]),
    ("/a%20b", ["/a%20b"; 4]),
    ("/a%3fb", ["/a%3fb", "/a%3Fb", "/a%3Fb", "/a%3Fb"]),
    ("/a%3Bb", ["/a%3Bb"; 4]),
    ("/%c3%a9", ["/%c3%a9", "/%C3%A9", "/%C3%A9", "/%C3%A9"]),
    // Decoded once only: `%25` stays, so the `2e`/`2F` after it are text.
    ("/%252e%252e/admin", ["/%252e%252e/admin"; 4]),
    ("/%252F", ["/%252F"; 4]),
    ("/a/..%2F..%2F..%2Fetc", ["/a/..%2F..%2F..%2Fetc", "/a/..%2F..%2F..%2Fetc", "/a/..%2F..%2F..%2Fetc", "/etc"]),
    ("/a;x=1/b;y", ["/a;x=1/b;y"; 4]),
    ("/a?b?c#d?e", ["/a"; 4]),
    ("http://example.com/a/../b?q", ["/a/../b", "/b", "/b", "/b"]),
    ("HTTPS://example.com", ["/"; 4]),
    ("http://example.com?x", ["/"; 4]),
    ("http://example.com//a", ["//a", "//a", "/a", "/a"]),
    ("/ok?a%zz", ["/ok"; 4]),
    ("/ok#%zz", ["/ok"; 4]),
    // Rejections, in every mode.
    ("", [""; 4]),
    ("*", [""; 4]),
    ("admin", [""; 4]),
    ("?x", [""; 4]),
    ("ftp://example.com/a", [""; 4]),
    ("http:///a", [""; 4]),
    ("/a b", [""; 4]),
    ("/a\tb", [""; 4]),
    ("/a\u{7f}", [""; 4]),
    ("/\u{e9}", [""; 4]),
    ("/ok?a b", [""; 4]),
    ("/%zz", [""; 4]),
    ("/%4", [""; 4]),
    ("/%", [""; 4]),
    ("/%g0", [""; 4]),
    ("/admin%00", [""; 4]),
];

#[test]
fn table_per_mode() {
    for (raw, want) in TABLE {
        for (how, want) in MODES.iter().zip(want) {
            let got = normalize(raw, *how).map(|n| n.path).unwrap_or_default();
            assert_eq!(got, *want, "{raw:?} in {how}");
        }
    }
}

#[test]
fn idempotent_over_table() {
    for (raw, _) in TABLE {
        for how in MODES {
            let Ok(n) = normalize(raw, how) else { continue };
            assert_eq!(normalize(&n.path, how).unwrap().path, n.path, "{raw:?} in {how}");
            assert_eq!(normalize(&n.target(), how).unwrap(), n, "{raw:?} in {how}");
        }
    }
}

#[test]
fn rejections_say_why() {
    let cases: &[(&str, PathError)] = &[
        ("", PathError::Empty),
        ("*", PathError::Asterisk),
        ("admin", PathError::NotOrigin),
        ("mailto://x/a", PathError::NotOrigin),
        ("/a b", PathError::BadChar { at: 2, byte: b' ' }),
        ("/a\r\n", PathError::BadChar { at: 2, byte: b'\r' }),
        ("/\u{e9}", PathError::BadChar { at: 1, byte: 0xc3 }),
        ("/x%zz", PathError::BadPercent { at: 2 }),
        ("/x%4", PathError::BadPercent { at: 2 }),
        ("/admin%00", PathError::EncodedNul { at: 6 }),
    ];
    for (raw, want) in cases {
        assert_eq!(normalize(raw, Normalization::default()).unwrap_err(), *want, "{raw:?}");
    }
    assert!(PathError::EncodedNul { at: 6 }.to_string().contains("%00"));
}

#[test]
fn query_is_kept_for_forwarding() {
    let q = |raw: &str| normalize(raw, Normalization::default()).unwrap().query;
    assert_eq!(q("/a?x=1&y=%2f"), Some("x=1&y=%2f".into()));
    assert_eq!(q("/a?"), Some(String::new()));
    assert_eq!(q("/a?b?c"), Some("b?c".into()));
    assert_eq!(q("/a#f?x"), None);
    assert_eq!(q("/a"), None);
    let n = normalize("/x/../a%2fb?q=%2e#frag", Normalization::default()).unwrap();
    assert_eq!(n.target(), "/a/b?q=%2e");
}

#[test]
fn match_path_drops_parameters() {
    let cases: &[(&str, Normalization, &str)] = &[
        ("/a;x=1/b;y", Normalization::default(), "/a/b"),
        ("/admin;jsessionid=1", Normalization::default(), "/admin"),
        ("/admin", Normalization::default(), "/admin"),
        // Tomcat reads `..;` as `..`.
        ("/foo/..;/admin", Normalization::default(), "/admin"),
        ("/foo/..;/admin", Normalization::Base, "/admin"),
        ("/foo/..;/admin", Normalization::None, "/foo/../admin"),
        ("/;x/admin", Normalization::Base, "//admin"),
        ("/;x/admin", Normalization::MergeSlashes, "/admin"),
        ("/a/.;x", Normalization::default(), "/a/"),
    ];
    for (raw, how, want) in cases {
        assert_eq!(normalize(raw, *how).unwrap().match_path(), *want, "{raw:?} in {how}");
    }
}

fn patterns(ps: &[&str]) -> Vec<PathPattern> {
    ps.iter().map(|p| PathPattern::parse(p).unwrap()).collect()
}

/// What the agent does with a request against a DENY on these paths: 400 or 403 both
/// keep the request away from the application.
fn blocked(raw: &str, deny: &[PathPattern]) -> bool {
    match normalize(raw, Normalization::default()) {
        Err(_) => true,
        Ok(n) => deny.iter().any(|p| p.matches(&n.match_path())),
    }
}

#[test]
fn bypasses_meet_the_deny() {
    let deny = patterns(&["/admin", "/admin/*"]);
    for raw in [
        "/admin",
        "//admin",
        "/./admin",
        "/foo/../admin",
        "/%61dmin",
        "/admin/",
        "/admin/x",
        "/foo%2F..%2Fadmin",
        "/foo%2f..%2fadmin",
        "/admin;jsessionid=1",
        "/admin?x",
        "/admin#x",
        "\\admin",
        "/foo/..%5Cadmin",
        "/%2e%2e/admin",
        "/admin%00",
        "/foo/..;/admin",
        "/%2fadmin",
        "http://evil/admin",
        "/admin/%2e%2e/admin",
    ] {
        assert!(blocked(raw, &deny), "{raw:?} got past a DENY on /admin");
    }
    // Paths are case-sensitive in Istio: /ADMIN is another resource. An application that
    // folds case needs the DENY to list it too.
    assert!(!blocked("/ADMIN", &deny));
    assert!(!blocked("/administrator", &deny));
}

#[test]
fn allow_prefix_is_not_escaped() {
    let allow = PathPattern::parse("/public/*").unwrap();
    for raw in ["/public/..;/admin", "/public/..%2Fadmin", "/public/%2e%2e/admin", "/public/../admin"] {
        let n = normalize(raw, Normalization::default()).unwrap();
        assert!(!allow.matches(&n.match_path()), "{raw:?} passed as {:?}", n.match_path());
    }
    assert!(allow.matches(&normalize("/public/a;v=1", Normalization::default()).unwrap().match_path()));
}

#[test]
fn string_patterns() {
    let cases: &[(&str, &str, bool)] = &[
        ("/admin", "/admin", true),
        ("/admin", "/admin/", false),
        ("/admin", "/Admin", false),
        ("/admin*", "/admin", true),
        ("/admin*", "/administrator", true),
        ("/admin*", "/admi", false),
        ("/admin/*", "/admin/", true),
        ("/admin/*", "/admin", false),
        ("*/admin", "/x/admin", true),
        ("*/admin", "/x/admin/", false),
        ("*.css", "/s/a.css", true),
        ("*", "/", true),
        ("*", "", false),
        ("/a*b", "/a*b", true),
        ("/a*b", "/axb", false),
    ];
    for (p, path, want) in cases {
        assert_eq!(PathPattern::parse(p).unwrap().matches(path), *want, "{p:?} on {path:?}");
    }
    assert_eq!(PathPattern::parse("/a*b").unwrap(), PathPattern::Exact("/a*b".into()));
    assert_eq!(PathPattern::parse("*").unwrap(), PathPattern::Presence);
}

#[test]
fn templates() {
    let cases: &[(&str, &str, bool)] = &[
        ("/foo/{*}", "/foo/bar", true),
        ("/foo/{*}", "/foo/bar/baz", false),
        ("/foo/{*}", "/foo/", false),
        ("/foo/{*}", "/foo", false),
        ("/foo/{**}/", "/foo/bar/", true),
        ("/foo/{**}/", "/foo/bar/baz/", true),
        ("/foo/{**}/", "/foo//", true),
        ("/foo/{**}/", "/foo/bar", false),
        // Istio's docs claim a match here; Envoy's regex (`/foo/[...]*/`, full match) says no.
        ("/foo/{**}/", "/foo/bar/baz.txt", false),
        ("/foo/{*}/bar/{**}", "/foo/buzz/bar/", true),
        ("/foo/{*}/bar/{**}", "/foo/buzz/bar/baz", true),
        ("/foo/{*}/bar/{**}", "/foo/buzz/bar", false),
        ("/foo/{*}/bar/{**}", "/foo//bar/x", false),
        ("/foo/{**}", "/foo", false),
        ("/foo/{**}", "/foo/", true),
        ("/foo/{**}", "/foo/a/b/c", true),
        ("/foo/{**}", "/food/a", false),
        ("/{**}", "/", true),
        ("/{**}/x.txt", "/a/b/x.txt", true),
        ("/{**}/x.txt", "/x.txt", false),
        ("/{*}/{*}", "/a/b", true),
        ("/{*}/{*}", "/a", false),
        ("/api/{*}/delete", "/api/a=b/delete", true),
        ("/api/{*}/delete", "api/a/delete", false),
    ];
    for (p, path, want) in cases {
        assert_eq!(PathPattern::parse(p).unwrap().matches(path), *want, "{p:?} on {path:?}");
    }
}

#[test]
fn invalid_patterns() {
    for p in [
        "",
        "/*/baz/{*}",
        "/**/baz/{*}",
        "/{**}/foo/{*}",
        "/{**}/{**}",
        "/foo/{*}.txt",
        "foo/{*}",
        "/a//{*}",
        "/a/{b}",
        "/a}",
    ] {
        assert!(PathPattern::parse(p).is_err(), "{p:?} parsed");
    }
}

#[test]
fn hosts() {
    let cases: &[(&str, &str, bool)] = &[
        ("example.com", "example.com", true),
        ("example.com", "EXAMPLE.com", true),
        ("Example.COM", "example.com", true),
        ("example.com", "example.com:8080", true),
        ("example.com", "example.com:", true),
        ("example.com", "other.com", false),
        ("example.com", "example.com.evil", false),
        ("example.com", "example.com.", true),
        ("example.com:8080", "example.com:8080", true),
        ("example.com:8080", "example.com:9090", false),
        ("example.com:8080", "example.com", false),
        ("example.com:80", "example.com:080", true),
        ("example.com:*", "example.com:1234", true),
        ("*.example.com", "a.example.com", true),
        ("*.example.com", "A.B.Example.com:443", true),
        ("*.example.com", "example.com", false),
        ("*.example.com", "evilexample.com", false),
        ("example.*", "example.org", true),
        ("example.*", "EXAMPLE.org:80", true),
        ("example.*", "examples.org", false),
        ("*", "anything:1", true),
        ("*", "", false),
        ("*:8080", "x:8080", true),
        ("*:8080", "x:80", false),
        ("[::1]", "[::1]:8080", true),
        ("[::1]", "[::1]", true),
        ("::1", "[::1]:8080", true),
        ("[::1]:8080", "[::1]:8080", true),
        ("[::1]:8080", "[::1]:9090", false),
        ("[::1]", "[::2]:8080", false),
        ("[::1]", "[::1]x", false),
        ("[2001:DB8::1]", "[2001:db8::1]:443", true),
        ("\u{e9}.com", "\u{e9}.com", true),
        ("*.com", "\u{e9}", false),
    ];
    for (p, a, want) in cases {
        assert_eq!(host_matches(p, a), *want, "{p:?} on {a:?}");
    }
}

#[test]
fn methods() {
    assert!(method_matches("GET", "GET"));
    assert!(!method_matches("GET", "get"));
    assert!(!method_matches("GET", "POST"));
    assert!(method_matches("*", "PATCH"));
    assert!(method_matches("P*", "PUT"));
    assert!(!method_matches("P*", "GET"));
}

#[test]
fn normalization_names() {
    for how in MODES {
        assert_eq!(how.to_string().parse::<Normalization>(), Ok(how));
    }
    let istio = [
        ("NONE", Normalization::None),
        ("BASE", Normalization::Base),
        ("MERGE_SLASHES", Normalization::MergeSlashes),
        ("DECODE_AND_MERGE_SLASHES", Normalization::DecodeAndMergeSlashes),
    ];
    for (s, how) in istio {
        assert_eq!(s.parse::<Normalization>(), Ok(how));
    }
    assert!("DEFAULT".parse::<Normalization>().is_err());
    assert!("merge".parse::<Normalization>().is_err());
    assert_eq!(Normalization::default(), Normalization::DecodeAndMergeSlashes);
}

/// Seeded xorshift over an alphabet built to hit escapes, dots, slashes, parameters,
/// queries and fragments: never a panic, always idempotent, and the promises of each mode.
#[test]
fn fuzz_idempotent() {
    let alphabet: Vec<char> = "/.%2fF5cC;?#a\\".chars().collect();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut accepted = 0;
    for _ in 0..20_000 {
        let len = (next() % 24) as usize;
        let mut raw: String = (0..len).map(|_| alphabet[(next() % alphabet.len() as u64) as usize]).collect();
        if next() % 4 != 0 {
            raw.insert(0, '/');
        }
        for how in MODES {
            let Ok(n) = normalize(&raw, how) else { continue };
            accepted += 1;
            assert!(n.path.starts_with('/'), "{raw:?} in {how}: {n:?}");
            assert_eq!(normalize(&n.target(), how).as_ref(), Ok(&n), "{raw:?} in {how}");
            let m = n.match_path();
            assert!(m.starts_with('/') && !m.contains(';'), "{raw:?} in {how}: {m:?}");
            if how != Normalization::None {
                let dots = |p: &str| p.split('/').any(|s| s == "." || s == "..");
                assert!(!dots(&n.path) && !dots(&m), "{raw:?} in {how}: {n:?} {m:?}");
                assert!(!n.path.contains('\\'), "{raw:?} in {how}: {n:?}");
            }
            if how.merges() {
                assert!(!n.path.contains("//") && !m.contains("//"), "{raw:?} in {how}: {n:?} {m:?}");
            }
            if how == Normalization::DecodeAndMergeSlashes {
                assert!(!n.path.to_ascii_uppercase().contains("%2F"), "{raw:?}: {n:?}");
            }
        }
    }
    assert!(accepted > 20_000, "only {accepted} accepted: the alphabet no longer reaches normalization");
}
