use harness::clock::{PreciseTimer, mono_ns};
#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut t = PreciseTimer::new().unwrap();
    let mut v = vec![];
    for _ in 0..2000 {
        let d = mono_ns() + 1_000_000;
        t.sleep_until(d).await.unwrap();
        v.push(mono_ns() - d);
    }
    v.sort();
    println!("timerfd p50 {} p90 {} p99 {}", v[1000], v[1800], v[1980]);
    let mut v = vec![];
    for _ in 0..2000 {
        let d = mono_ns() + 1_000_000;
        std::thread::sleep(std::time::Duration::from_nanos(d - mono_ns()));
        v.push(mono_ns() - d);
    }
    v.sort();
    println!("nanosleep p50 {} p90 {} p99 {}", v[1000], v[1800], v[1980]);
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1u64, 0, 0, 0) };
    let mut v = vec![];
    for _ in 0..2000 {
        let d = mono_ns() + 1_000_000;
        std::thread::sleep(std::time::Duration::from_nanos(d - mono_ns()));
        v.push(mono_ns() - d);
    }
    v.sort();
    println!(
        "nanosleep slack1 p50 {} p90 {} p99 {}",
        v[1000], v[1800], v[1980]
    );
}
