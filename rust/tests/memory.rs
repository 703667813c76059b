//! Heap used by probing, counted by a global allocator that tracks live and peak bytes of every thread.
//!
//! - One streaming probe of a large JPEG (baseline and progressive), PNG or GIF, fetched over loopback HTTP
//!   through a [`Prober`] as Prosody uses it, stays under 1 MiB of heap: the download's buffers, the
//!   prober and its decoder together, whatever the image's size.
//! - Decoding a WebP of each kind (simple lossy and lossless, with alpha, animated) takes no more than
//!   [`webp::estimate`], the memory it asks of the decode budget first.
//!
//! Everything runs in one test function: a second test running beside it would be counted too.

#[path = "../benches/counting.rs"]
mod counting;

use counting::{Counting, LIVE, PEAK};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prosody_native::jobs;
use prosody_native::media::netguard::Policy;
use prosody_native::media::probe::{probe, webp, ProbeLimits};
use prosody_native::media::{MediaLimits, Prober};

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Runs `f` and returns its result with the most heap live at once during it, above what was live before.
fn peak_during<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let before = LIVE.load(Ordering::SeqCst);
    PEAK.store(before, Ordering::SeqCst);
    let result = f();
    (result, PEAK.load(Ordering::SeqCst).saturating_sub(before))
}

fn data(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// A smooth photo-like RGB image (gradients and a little noise).
fn pixels(width: usize, height: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(width * height * 3);
    let mut noise = 0x9E37_79B9_u32;
    for y in 0..height {
        for x in 0..width {
            noise ^= noise << 13;
            noise ^= noise >> 17;
            noise ^= noise << 5;
            let n = (noise & 7) as usize;
            out.push(((x * 255 / width + n) & 255) as u8);
            out.push(((y * 255 / height + n) & 255) as u8);
            out.push((((x + y) * 97 / (width + height) + n) & 255) as u8);
        }
    }
    out
}

fn jpeg(width: u16, height: u16, progressive: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let mut encoder = jpeg_encoder::Encoder::new(&mut out, 85);
    encoder.set_progressive(progressive);
    encoder
        .encode(
            &pixels(width as usize, height as usize),
            width,
            height,
            jpeg_encoder::ColorType::Rgb,
        )
        .unwrap();
    out
}

fn png(width: u32, height: u32, rgba: bool) -> Vec<u8> {
    let rgb = pixels(width as usize, height as usize);
    let data: Vec<u8> = if rgba {
        rgb.chunks_exact(3)
            .flat_map(|p| [p[0], p[1], p[2], p[0] ^ p[1]])
            .collect()
    } else {
        rgb
    };
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, width, height);
    encoder.set_color(if rgba {
        png::ColorType::Rgba
    } else {
        png::ColorType::Rgb
    });
    encoder.set_compression(png::Compression::Fast);
    let mut writer = encoder.write_header().unwrap();
    writer.write_image_data(&data).unwrap();
    writer.finish().unwrap();
    out
}

fn gif(width: u16, height: u16) -> Vec<u8> {
    let indices: Vec<u8> = pixels(width as usize, height as usize)
        .chunks_exact(3)
        .map(|p| p[0] & 0xF0 | p[1] >> 4)
        .collect();
    let palette: Vec<u8> = (0..=255u8).flat_map(|i| [i & 0xF0, i << 4, i]).collect();
    let mut out = Vec::new();
    {
        let mut encoder = gif::Encoder::new(&mut out, width, height, &palette).unwrap();
        let frame = gif::Frame {
            width,
            height,
            buffer: std::borrow::Cow::Borrowed(&indices),
            ..gif::Frame::default()
        };
        encoder.write_frame(&frame).unwrap();
    }
    out
}

/// An HTTP server on loopback answering every request with `body` (chunked into small writes, as a network
/// delivers it), one thread per connection.
fn serve(body: Vec<u8>, content_type: &'static str) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let body = Arc::new(body);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let body = body.clone();
            std::thread::spawn(move || {
                let mut request = [0u8; 4096];
                let mut seen = 0;
                while !request[..seen].windows(4).any(|w| w == b"\r\n\r\n") && seen < request.len() {
                    match stream.read(&mut request[seen..]) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen += n,
                    }
                }
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                if stream.write_all(head.as_bytes()).is_err() {
                    return;
                }
                for part in body.chunks(16 << 10) {
                    if stream.write_all(part).is_err() {
                        return;
                    }
                }
            });
        }
    });
    format!("http://{addr}/image")
}

/// Probes `url` with `prober` and waits for its result (a table of fields as Lua gets it).
fn probe_url(prober: &Prober, url: &str) -> jobs::Fields {
    let id = prober.submit(url).unwrap();
    let fd = jobs::wakeup_fd().unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        assert!(Instant::now() < deadline, "no result for {url}");
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut pfd, 1, 1000) };
        if let Some(done) = jobs::take_results().into_iter().find(|c| c.id == id) {
            return done.result.unwrap();
        }
    }
}

fn field<'a>(fields: &'a jobs::Fields, name: &str) -> Option<&'a jobs::Field> {
    fields.iter().find(|(k, _)| *k == name).map(|(_, v)| v)
}

#[test]
fn probing_memory_is_bounded() {
    // WebP: each kind within the memory it asks for.
    let limits = ProbeLimits {
        max_webp_pixels: u64::MAX,
        max_decode_memory: 1 << 30,
        ..ProbeLimits::default()
    };
    for name in [
        "mem_lossy.webp",
        "mem_lossless.webp",
        "mem_alpha.webp",
        "mem_animated.webp",
        "mem_animated_lossless.webp",
        "photo_lossy.webp",
        "photo_lossless.webp",
    ] {
        let bytes = data(name);
        let estimate = webp::estimate(&bytes, bytes.len() as u64).unwrap();
        let (info, peak) = peak_during(|| probe(&bytes, &limits).unwrap());
        let pixels = info.width.unwrap() as usize * info.height.unwrap() as usize;
        eprintln!(
            "{name}: {} pixels, heap peak {peak} bytes ({:.2} a pixel), estimate {estimate}",
            pixels,
            peak as f64 / pixels as f64
        );
        assert!(info.blurhash.is_some(), "{name}");
        assert!(
            peak as u64 <= estimate,
            "{name}: peak {peak} over its estimate {estimate}"
        );
    }

    // JPEG, PNG and GIF, streamed from a server: under 1 MiB each, socket buffers included.
    let prober = Prober::new(MediaLimits {
        policy: Policy::parse(&["127.0.0.1/32"]).unwrap(),
        cache_size: 0,
        fetch: prosody_native::media::fetch::FetchLimits {
            timeout: Duration::from_secs(120),
            ..Default::default()
        },
        ..MediaLimits::default()
    })
    .unwrap();
    // The first probe builds the worker pool, the HTTP client and its TLS roots, which are not per probe.
    let warm_up = serve(data("photo.png"), "image/png");
    probe_url(&prober, &warm_up);
    probe_url(&prober, &warm_up);
    let cases = [
        ("baseline JPEG 4000x3000", jpeg(4000, 3000, false), "image/jpeg"),
        ("progressive JPEG 4000x3000", jpeg(4000, 3000, true), "image/jpeg"),
        ("PNG 3000x2000", png(3000, 2000, false), "image/png"),
        (
            "RGBA PNG 24576x40, the widest rows decoded",
            png(24_576, 40, true),
            "image/png",
        ),
        ("GIF 2000x1500", gif(2000, 1500), "image/gif"),
    ];
    for (what, body, content_type) in cases {
        let len = body.len();
        let url = serve(body, content_type);
        let (fields, peak) = peak_during(|| probe_url(&prober, &url));
        eprintln!("{what} ({len} bytes): heap peak {peak} bytes");
        assert!(field(&fields, "blurhash").is_some(), "{what}: {fields:?}");
        assert!(peak < 1 << 20, "{what}: heap peak {peak} bytes");
    }
}
