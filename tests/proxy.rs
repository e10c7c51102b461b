//! Which way the POST to Coder goes, through the real binary: straight to the
//! server or through the proxy the environment names, for every NO_PROXY form.
//!
//! The proxy is a stand-in in this process that records what reaches it and
//! answers 502. Loopback and `localhost` are never proxied (Go's rule), so the
//! NO_PROXY forms are tried against a Coder at a non-loopback address: inside
//! a network namespace where 192.0.2.10 and 2001:db8::10 sit on `lo` and
//! `coder.example.test` names 192.0.2.10. Those tests need root and `ip`;
//! they are skipped otherwise (and fail under `CI=true`). The rest run anywhere.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::netns::{self, Netns};
use crate::common::*;

const V4: &str = "192.0.2.10";
const V6: &str = "2001:db8::10";
const NAME: &str = "coder.example.test";
const EXCHANGE_PATH: &str = "/api/v2/workspaceagents/aws-instance-identity";

/// What the stand-in proxy answers to a request (its head, as received).
type ProxyAnswer = Arc<dyn Fn(&[u8]) -> Vec<u8> + Send + Sync>;

/// A stand-in HTTP proxy: records the peer of every connection it accepts
/// and the request line of every request, and answers each with a 502 (or
/// what [`FakeProxy::answering`] was given).
struct FakeProxy {
    addr: SocketAddr,
    peers: Arc<Mutex<Vec<SocketAddr>>>,
    lines: Arc<Mutex<Vec<String>>>,
    /// Asks a thread in the proxy's own network namespace for a marker connection.
    marker: std::sync::mpsc::Sender<std::sync::mpsc::Sender<SocketAddr>>,
    /// The marker connections made so far (not counted as connections).
    markers: Mutex<Vec<SocketAddr>>,
}

impl FakeProxy {
    fn start() -> FakeProxy {
        FakeProxy::answering(Arc::new(|_| {
            b"HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain\r\nContent-Length: 19\r\n\
              Connection: close\r\n\r\nfake proxy says no\n"
                .to_vec()
        }))
    }

    fn answering(answer: ProxyAnswer) -> FakeProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let peers: Arc<Mutex<Vec<SocketAddr>>> = Arc::default();
        let lines: Arc<Mutex<Vec<String>>> = Arc::default();
        let (p, l) = (peers.clone(), lines.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                if let Ok(peer) = conn.peer_addr() {
                    p.lock().unwrap().push(peer);
                }
                let l = l.clone();
                let answer = answer.clone();
                std::thread::spawn(move || answer_with(conn, &l, &*answer));
            }
        });
        let (marker, asks) = std::sync::mpsc::channel::<std::sync::mpsc::Sender<SocketAddr>>();
        std::thread::spawn(move || {
            let mut open = Vec::new();
            for reply in asks {
                let conn = TcpStream::connect(addr).unwrap();
                let _ = reply.send(conn.local_addr().unwrap());
                open.push(conn);
            }
        });
        FakeProxy {
            addr,
            peers,
            lines,
            marker,
            markers: Mutex::default(),
        }
    }

    /// The proxy URL with credentials that must never be shown.
    fn url_with_secret(&self) -> String {
        format!("http://agent:hunter2@{}", self.addr)
    }

    /// How it appears in messages.
    fn shown(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// The request lines received so far.
    fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// How many connections reached it, counted only once every connection
    /// made before this call has been accepted: a marker connection is made
    /// and waited for (accept order is connection order).
    fn connections(&self) -> usize {
        let (reply, answer) = std::sync::mpsc::channel();
        self.marker.send(reply).unwrap();
        let me = answer.recv().unwrap();
        let mut markers = self.markers.lock().unwrap();
        markers.push(me);
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            let peers = self.peers.lock().unwrap().clone();
            if peers.contains(&me) {
                return peers.iter().filter(|p| !markers.contains(p)).count();
            }
            assert!(Instant::now() < until, "the fake proxy stopped accepting");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

fn answer_with(mut conn: TcpStream, lines: &Mutex<Vec<String>>, answer: &dyn Fn(&[u8]) -> Vec<u8>) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 65536 {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let line = String::from_utf8_lossy(&head)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string();
    lines.lock().unwrap().push(line);
    let _ = conn.write_all(&answer(&head));
}

/// The way a run's POST should go.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Way {
    Direct,
    Proxy,
}
use Way::*;

/// A Coder (and AWS metadata service) reachable at non-loopback addresses
/// inside a namespace, with a fake proxy there.
struct Site {
    ns: Netns,
    sim: Sim,
    proxy: FakeProxy,
}

impl Site {
    /// `None` (after saying why) when namespaces are not available.
    fn new(tag: &str, coder_addr: &str, tls: bool) -> Option<Site> {
        if !netns::available(&format!("proxy test {tag:?} (needs a network namespace)")) {
            return None;
        }
        // IPv6 only where needed: some machines have it disabled.
        let mut addrs = vec![format!("{V4}/32")];
        if coder_addr.starts_with('[') {
            addrs.push(format!("{V6}/128"));
        }
        let addrs: Vec<&str> = addrs.iter().map(String::as_str).collect();
        let ns = Netns::new(
            &format!("px-{tag}"),
            &addrs,
            &format!("127.0.0.1 localhost\n{V4} {NAME}\n"),
        );
        let coder: SocketAddr = coder_addr.parse().unwrap();
        let (sim, proxy) = ns.run_inside(move || {
            let mut cfg = SimConfig::new(Cloud::Aws, &["main"]);
            cfg.coder_tls = tls;
            let md: SocketAddr = format!("{V4}:0").parse().unwrap();
            let sim = Sim::start_on(cfg, md, coder).expect("the simulator binds in the namespace");
            (sim, FakeProxy::start())
        });
        Some(Site { ns, sim, proxy })
    }

    fn port(&self) -> u16 {
        self.sim.coder_addr().port()
    }

    /// Run the exchange against `url` inside the namespace with `env` added.
    fn run(&self, url: &str, env: &[(&str, &str)]) -> (Run, Option<String>) {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("t.token");
        let mut c = self.ns.exec();
        c.arg(bin())
            .args(["--timeout", "1s", "--token-file"])
            .arg(&token)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("CODER_AGENT_URL", url)
            .env("CODER_AGENT_AUTH", "aws-instance-identity")
            .env("AWS_EC2_METADATA_SERVICE_ENDPOINT", self.sim.metadata_url())
            .stdin(std::process::Stdio::null());
        for (k, v) in env {
            c.env(k, v);
        }
        (run(c), std::fs::read_to_string(&token).ok())
    }

    /// Run with HTTP(S)_PROXY at the fake proxy plus `env`, and check that the
    /// POST went `want`. Returns a description of what was wrong, if anything.
    fn check(&self, url: &str, env: &[(&str, &str)], want: Way) -> Option<String> {
        let proxy_url = self.proxy.url_with_secret();
        let var = if url.starts_with("https") {
            "HTTPS_PROXY"
        } else {
            "HTTP_PROXY"
        };
        let mut all = vec![(var, proxy_url.as_str())];
        all.extend_from_slice(env);
        self.check_with(url, &all, var, want)
    }

    /// Like [`Site::check`] with the whole proxy environment given; `var` is
    /// the variable the proxy should be taken from when proxied.
    fn check_with(&self, url: &str, env: &[(&str, &str)], var: &str, want: Way) -> Option<String> {
        let posts_before = coder_requests(&self.sim).len();
        let md_before = metadata_requests(&self.sim).len();
        let lines_before = self.proxy.lines().len();
        let conns_before = self.proxy.connections();
        let (r, token) = self.run(url, env);
        let posts = coder_requests(&self.sim).len() - posts_before;
        let lines = self.proxy.lines()[lines_before..].to_vec();
        let conns = self.proxy.connections() - conns_before;
        let md = metadata_requests(&self.sim).len() - md_before;
        let case = format!("{url} with {env:?}");
        let mut wrong = Vec::new();
        if r.stderr.contains("hunter2") || r.stdout.contains("hunter2") {
            wrong.push("the proxy's password was shown".to_string());
        }
        // A fresh identity for every attempt (1 IMDSv2 token PUT, reused, then 2 GETs an
        // attempt), every one of them straight to the metadata service: none reached the proxy
        // (the proxy's lines are checked below).
        if md < 3 || !(md - 1).is_multiple_of(2) {
            wrong.push(format!(
                "metadata did not go direct ({md} requests reached it; want 1 + 2 per attempt)"
            ));
        }
        match want {
            Direct => {
                if r.code != 0 || posts != 1 || conns != 0 {
                    wrong.push(format!(
                        "want direct: exit {} (want 0), {posts} POST(s) reached Coder (want 1), \
                         {conns} connection(s) reached the proxy (want 0)",
                        r.code
                    ));
                }
                if r.code == 0
                    && token.as_deref().map(str::trim) != Some(&issued(&self.sim, "main"))
                {
                    wrong.push("the token file does not hold the issued token".into());
                }
            }
            Proxy => {
                let target = if url.starts_with("https") {
                    let authority = url.trim_start_matches("https://");
                    format!("CONNECT {authority}")
                } else {
                    format!("POST {url}{EXCHANGE_PATH}")
                };
                if r.code != 6
                    || posts != 0
                    || lines.is_empty()
                    || !lines.iter().all(|l| l.starts_with(&target))
                {
                    wrong.push(format!(
                        "want proxied: exit {} (want 6), {posts} POST(s) reached Coder (want 0), \
                         the proxy saw {lines:?} (want only {target:?})",
                        r.code
                    ));
                }
                let named = format!("through the proxy {var}={}", self.proxy.shown());
                if !r.stderr.contains(&named) {
                    wrong.push(format!("stderr does not say {named:?}"));
                }
            }
        }
        (!wrong.is_empty()).then(|| format!("{case}: {}\n  stderr: {}", wrong.join("; "), r.stderr))
    }
}

fn assert_all(site: &Site, cases: &[(String, &str, Way)]) {
    let mut failures = Vec::new();
    for (no_proxy, url, want) in cases {
        let env = [("NO_PROXY", no_proxy.as_str())];
        let env: &[(&str, &str)] = if no_proxy.is_empty() { &[] } else { &env };
        failures.extend(site.check(url, env, *want));
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn no_proxy_forms_for_an_ipv4_address() {
    let Some(site) = Site::new("v4", &format!("{V4}:0"), false) else {
        return;
    };
    let port = site.port();
    let url = format!("http://{V4}:{port}");
    let s = |s: &str| s.replace("PORT", &port.to_string());
    let cases = [
        (s(""), url.as_str(), Proxy),
        (s("*"), &url, Direct),
        (s("other.example, * "), &url, Direct),
        (s(V4), &url, Direct),
        (s("192.0.2.10:PORT"), &url, Direct),
        (s("192.0.2.0/24"), &url, Direct),
        (s("10.0.0.0/8 , 192.0.2.0/24"), &url, Direct),
        (s("192.0.2.10:1"), &url, Proxy),
        (s("192.0.2.11"), &url, Proxy),
        (s("192.0.3.0/24"), &url, Proxy),
        (s("2.10"), &url, Proxy),
        (s(NAME), &url, Proxy),
    ];
    assert_all(&site, &cases);
    // The lower-case variable, when NO_PROXY is unset or empty.
    let mut failures = Vec::new();
    failures.extend(site.check(&url, &[("no_proxy", &s("192.0.2.10:PORT"))], Direct));
    failures.extend(site.check(
        &url,
        &[("NO_PROXY", ""), ("no_proxy", &s("192.0.2.10:PORT"))],
        Direct,
    ));
    failures.extend(site.check(
        &url,
        &[("NO_PROXY", "192.0.2.11"), ("no_proxy", "*")],
        Proxy,
    ));
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn no_proxy_forms_for_a_domain() {
    let Some(site) = Site::new("dom", &format!("{V4}:0"), false) else {
        return;
    };
    let port = site.port();
    let url = format!("http://{NAME}:{port}");
    let s = |s: &str| s.replace("PORT", &port.to_string());
    let cases = [
        (s(""), url.as_str(), Proxy),
        (s("*"), &url, Direct),
        (s(NAME), &url, Direct),
        (s("example.test"), &url, Direct),
        (s(".example.test"), &url, Direct),
        (s("*.example.test"), &url, Direct),
        (s("CODER.Example.TEST"), &url, Direct),
        (s("coder.example.test:PORT"), &url, Direct),
        (s("*.example.test:PORT"), &url, Direct),
        (s(".coder.example.test"), &url, Proxy),
        (s("ample.test"), &url, Proxy),
        (s("coder.example.test:1"), &url, Proxy),
        (s("coder.example"), &url, Proxy),
        // An address never matches a name, even the one it resolves to.
        (s(V4), &url, Proxy),
    ];
    assert_all(&site, &cases);
}

#[test]
fn no_proxy_forms_for_an_ipv6_address() {
    let Some(site) = Site::new("v6", &format!("[{V6}]:0"), false) else {
        return;
    };
    let port = site.port();
    let url = format!("http://[{V6}]:{port}");
    let s = |s: &str| s.replace("PORT", &port.to_string());
    let cases = [
        (s(""), url.as_str(), Proxy),
        (s("*"), &url, Direct),
        (s(V6), &url, Direct),
        (s("[2001:db8::10]"), &url, Direct),
        (s("[2001:DB8::10]:PORT"), &url, Direct),
        (s("2001:db8::/32"), &url, Direct),
        (s("[2001:db8::10]:1"), &url, Proxy),
        (s("2001:db8:1::/48"), &url, Proxy),
        (s("192.0.2.0/24"), &url, Proxy),
    ];
    assert_all(&site, &cases);
}

#[test]
fn https_takes_https_proxy_and_its_no_proxy() {
    let Some(site) = Site::new("tls", &format!("{V4}:0"), true) else {
        return;
    };
    let port = site.port();
    let url = format!("https://{V4}:{port}");
    // Proxied: a CONNECT to the fake proxy, refused with 502.
    let mut failures = Vec::new();
    failures.extend(site.check(&url, &[], Proxy));
    failures.extend(site.check(&url, &[("NO_PROXY", "192.0.2.10:443")], Proxy));
    // HTTP_PROXY never applies to https.
    let (r, _) = site.run(&url, &[("HTTP_PROXY", &site.proxy.url_with_secret())]);
    if r.stderr.contains("proxy") {
        failures.push(format!("HTTP_PROXY was used for https: {}", r.stderr));
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));

    // Direct: the simulator's certificate names only localhost, so the TLS
    // handshake with it fails, which shows the connection reached it.
    let conns = site.proxy.connections();
    let (r, _) = site.run(
        &url,
        &[
            ("HTTPS_PROXY", &site.proxy.url_with_secret()),
            ("NO_PROXY", &format!("{V4}:{port}")),
        ],
    );
    assert_eq!(r.code, 6, "{r:?}");
    assert!(r.stderr.contains("certificate"), "{}", r.stderr);
    assert!(
        r.stderr
            .contains("direct, not through HTTPS_PROXY: NO_PROXY entry \"192.0.2.10:"),
        "{}",
        r.stderr
    );
    assert_eq!(site.proxy.connections(), conns, "the proxy was contacted");
    assert!(!r.stderr.contains("hunter2"));
}

#[test]
fn which_variable_names_the_proxy() {
    let Some(site) = Site::new("vars", &format!("{V4}:0"), false) else {
        return;
    };
    let url = format!("http://{V4}:{}", site.port());
    let p = site.proxy.url_with_secret();
    let p = p.as_str();
    let nowhere = "http://127.0.0.1:9";
    type Env<'a> = &'a [(&'a str, &'a str)];
    let cases: &[(Env, &str, Way)] = &[
        // An empty HTTP_PROXY counts as unset: http_proxy applies.
        (
            &[("HTTP_PROXY", ""), ("http_proxy", p)],
            "http_proxy",
            Proxy,
        ),
        // Upper case first.
        (
            &[("HTTP_PROXY", p), ("http_proxy", nowhere)],
            "HTTP_PROXY",
            Proxy,
        ),
        // ALL_PROXY is the fallback, and only that.
        (&[("ALL_PROXY", p)], "ALL_PROXY", Proxy),
        (&[("all_proxy", p)], "all_proxy", Proxy),
        (
            &[("HTTP_PROXY", p), ("ALL_PROXY", nowhere)],
            "HTTP_PROXY",
            Proxy,
        ),
        // HTTPS_PROXY never applies to http.
        (&[("HTTPS_PROXY", p)], "", Direct),
        (&[("ALL_PROXY", p), ("NO_PROXY", "*")], "", Direct),
    ];
    let failures: Vec<String> = cases
        .iter()
        .filter_map(|(env, var, want)| site.check_with(&url, env, var, *want))
        .collect();
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

/// Runs anywhere: Coder on this machine's loopback.
#[test]
fn loopback_and_localhost_are_never_proxied() {
    let sim = start(Cloud::Aws, &["main"]);
    let proxy = FakeProxy::start();
    let port = sim.coder_addr().port();
    for url in [
        format!("http://127.0.0.1:{port}"),
        format!("http://localhost:{port}"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut c = command(&sim, &Cloud::Aws);
        c.env("CODER_AGENT_URL", &url)
            .env("HTTP_PROXY", proxy.url_with_secret())
            .env("ALL_PROXY", proxy.url_with_secret())
            .args(["--timeout", "2s", "--token-file"])
            .arg(token_path(&dir, "t"));
        let r = run(c);
        assert_eq!(r.code, 0, "{url}: {r:?}");
        assert_eq!(
            proxy.connections(),
            0,
            "{url} went to the proxy: {:?}",
            proxy.lines()
        );
    }
}

/// A URL that is never contacted: these runs stop before any request.
const UNUSED_URL: &str = "http://192.0.2.99:3000";

/// Runs anywhere.
#[test]
fn http_proxy_in_a_cgi_environment_is_refused() {
    let sim = start(Cloud::Aws, &["main"]);
    for var in ["HTTP_PROXY", "http_proxy"] {
        let mut c = command(&sim, &Cloud::Aws);
        let dir = tempfile::tempdir().unwrap();
        c.env("CODER_AGENT_URL", UNUSED_URL)
            .env(var, "http://agent:hunter2@127.0.0.1:9")
            .env("REQUEST_METHOD", "GET")
            .args(["--timeout", "1s", "--token-file"])
            .arg(token_path(&dir, "t"));
        let r = run(c);
        assert_eq!(r.code, 2, "{r:?}");
        assert!(
            r.stderr
                .contains(&format!("{var} is refused because REQUEST_METHOD is set")),
            "{}",
            r.stderr
        );
        assert!(r.stderr.contains("fix:"), "{}", r.stderr);
        assert!(!r.stderr.contains("hunter2"), "{}", r.stderr);
        assert!(sim.requests().is_empty(), "nothing is sent");
    }
}

/// Runs anywhere.
#[test]
fn unusable_proxy_values_are_usage_errors_that_withhold_the_value() {
    let sim = start(Cloud::Aws, &["main"]);
    for (value, says) in [
        (
            "socks5://agent:hunter2@127.0.0.1:1080",
            "HTTP_PROXY names a socks5:// proxy; only http:// and https:// proxies are supported",
        ),
        (
            "http://agent:hunter2@[::1",
            "HTTP_PROXY is not a usable proxy URL",
        ),
    ] {
        let mut c = command(&sim, &Cloud::Aws);
        let dir = tempfile::tempdir().unwrap();
        c.env("CODER_AGENT_URL", UNUSED_URL)
            .env("HTTP_PROXY", value)
            .args(["--timeout", "1s", "--token-file"])
            .arg(token_path(&dir, "t"));
        let r = run(c);
        assert_eq!(r.code, 2, "{value}: {r:?}");
        assert!(r.stderr.contains(says), "{}", r.stderr);
        assert!(!r.stderr.contains("hunter2"), "{}", r.stderr);
        assert!(sim.requests().is_empty(), "nothing is sent");
    }
}

/// Runs anywhere. An https:// proxy in front of a plain-http Coder URL: the
/// TLS session is with the proxy, verified against the OS trust store (here
/// SSL_CERT_FILE). The simulator plays the proxy: it serves TLS for
/// localhost and answers the absolute-form POST a proxy receives.
#[test]
fn an_https_proxy_for_an_http_coder_url_is_verified_and_used() {
    let mut cfg = SimConfig::new(Cloud::Aws, &["main"]);
    cfg.coder_tls = true;
    let sim = Sim::start(cfg);
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, sim.ca_pem().unwrap()).unwrap();
    let proxy = format!(
        "https://agent:hunter2@localhost:{}",
        sim.coder_addr().port()
    );
    let run_with = |ca_file: &std::path::Path| {
        let mut c = command(&sim, &Cloud::Aws);
        c.env("CODER_AGENT_URL", UNUSED_URL)
            .env("HTTP_PROXY", &proxy)
            .env("SSL_CERT_FILE", ca_file)
            .args(["--timeout", "1s", "--token-file"])
            .arg(token_path(&dir, "t"));
        run(c)
    };

    let r = run_with(&ca);
    assert_eq!(r.code, 0, "{r:?}");
    let posts = coder_requests(&sim);
    assert_eq!(posts.len(), 1, "the POST reached Coder through the proxy");
    assert_eq!(
        posts[0].header("proxy-authorization"),
        Some("Basic YWdlbnQ6aHVudGVyMg=="),
        "the proxy's credentials go to the proxy"
    );
    assert_eq!(
        std::fs::read_to_string(token_path(&dir, "t"))
            .unwrap()
            .trim(),
        issued(&sim, "main")
    );

    // An untrusted proxy certificate is a TLS failure that names the proxy.
    let other = dir.path().join("other.pem");
    let mut untrusted = SimConfig::new(Cloud::Aws, &["main"]);
    untrusted.coder_tls = true;
    std::fs::write(&other, Sim::start(untrusted).ca_pem().unwrap()).unwrap();
    let r = run_with(&other);
    assert_eq!(r.code, 6, "{r:?}");
    assert!(
        r.stderr.contains(&format!(
            "through the proxy HTTP_PROXY=https://localhost:{}/",
            sim.coder_addr().port()
        )),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("hunter2"), "{}", r.stderr);
    assert_eq!(coder_requests(&sim).len(), 1, "nothing more reached Coder");
}

/// Runs anywhere. A proxy that refuses with a 407 page repeating the
/// credentials it was sent: raw, as the `Basic` base64 of the header, and
/// decoded (`user:password`). None of them is shown.
#[test]
fn a_407_page_that_echoes_the_proxy_credentials_shows_none_of_them() {
    let proxy = FakeProxy::answering(Arc::new(|head: &[u8]| {
        let head = String::from_utf8_lossy(head);
        let basic = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .starts_with("proxy-authorization:")
                    .then(|| l["proxy-authorization:".len()..].trim().to_string())
            })
            .unwrap_or_default();
        let page = format!(
            "<html><body><h1>407 Proxy Authentication Required</h1>\
             <p>credentials {basic} (that is svc-coder:Pr0xy-S3cret) refused; \
             password Pr0xy-S3cret, url-encoded Pr0xy%2DS3cret, \
             html svc-coder:Pr0xy-S3cret&#33;</p>\
             <p>request was: {}</p></body></html>",
            head.replace("\r\n", " | ")
        );
        format!(
            "HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"{basic}\"\r\n\
             Content-Type: text/html; charset={basic}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{page}",
            page.len()
        )
        .into_bytes()
    }));
    let sim = start(Cloud::Aws, &["main"]);
    let url = format!("http://svc-coder:Pr0xy-S3cret@{}", proxy.addr);
    for extra in [&[][..], &["--json", "-vv", "--log-format", "json"]] {
        let dir = tempfile::tempdir().unwrap();
        let mut c = command(&sim, &Cloud::Aws);
        c.env("CODER_AGENT_URL", UNUSED_URL)
            .env("HTTP_PROXY", &url)
            .env("RUST_LOG", "trace")
            .args(["--timeout", "2s"])
            .args(extra)
            .arg("--token-file")
            .arg(token_path(&dir, "t"));
        let r = run(c);
        assert_eq!(r.code, 4, "{r:?}");
        assert!(r.stderr.contains("407"), "{}", r.stderr);
        for s in [
            "Pr0xy-S3cret",
            "Pr0xy%2DS3cret",
            "c3ZjLWNvZGVyOlByMHh5LVMzY3JldA==",
            "c3ZjLWNvZGVyOlByMHh5LVMzY3JldA",
        ] {
            assert!(!r.stderr.contains(s), "{s}: {}", r.stderr);
            assert!(!r.stdout.contains(s), "{s}: {}", r.stdout);
        }
        assert!(r.stderr.contains("withheld"), "{}", r.stderr);
    }
    assert!(!proxy.lines().is_empty(), "the request went to the proxy");
}
