// Go peers of the cawait benchmarks (standard library only).
//
//	GOMAXPROCS=1 go_bench <bench> <N>
//
// bench is one of switch, spawn, sleepers, timers; each measures what the C
// program bench/bench_<bench>.c measures, the same way (monotonic clock,
// peak RSS from getrusage), and prints
//
//	BENCH <name> go <value> <unit>
//
// Random delays come from math/rand seeded with 42 and are drawn before the
// clock starts, like the C benchmarks.  GOMAXPROCS defaults to 1 when the
// environment does not set it, so goroutines share one thread like cawait's
// tasks.
package main

import (
	"fmt"
	"math/rand"
	"os"
	"runtime"
	"strconv"
	"sync"
	"syscall"
	"time"
)

func report(name string, value float64, decimals int, unit string) {
	fmt.Printf("BENCH %s go %.*f %s\n", name, decimals, value, unit)
}

// Peak resident set size in MiB (Maxrss is in KiB on Linux).
func peakRSSMiB() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return -1
	}
	return float64(ru.Maxrss) / 1024.0
}

// Two goroutines call runtime.Gosched() n/2 times each: n switches.
func benchSwitch(n int) {
	// Best of switchRounds rounds, as bench_switch.c does: on a shared VM a
	// round can land on a slower core; both implementations get the same
	// treatment.
	half := n / 2
	best := 0.0
	for round := 0; round < switchRounds; round++ {
		var wg sync.WaitGroup
		yielder := func() {
			defer wg.Done()
			for i := 0; i < half; i++ {
				runtime.Gosched()
			}
		}
		t0 := time.Now()
		wg.Add(2)
		go yielder()
		go yielder()
		wg.Wait()
		ns := float64(time.Since(t0).Nanoseconds()) / float64(2*half)
		if round == 0 || ns < best {
			best = ns
		}
	}
	report("switch", best, 2, "ns")
}

const switchRounds = 3

// n empty goroutines, joined all with a WaitGroup.
func benchSpawn(n int) {
	var wg sync.WaitGroup
	empty := func() { wg.Done() }
	t0 := time.Now()
	wg.Add(n)
	for i := 0; i < n; i++ {
		go empty()
	}
	wg.Wait()
	elapsed := time.Since(t0)
	report("spawn", elapsed.Seconds(), 4, "s")
	report("spawn_rss", peakRSSMiB(), 1, "MiB")
}

// n goroutines each time.Sleep(uniform [0, 1) s), joined with a WaitGroup.
func benchSleepers(n int) {
	rng := rand.New(rand.NewSource(42))
	delays := make([]time.Duration, n)
	for i := range delays {
		delays[i] = time.Duration(rng.Float64() * float64(time.Second))
	}
	var wg sync.WaitGroup
	sleeper := func(d time.Duration) {
		time.Sleep(d)
		wg.Done()
	}
	t0 := time.Now()
	wg.Add(n)
	for i := 0; i < n; i++ {
		go sleeper(delays[i])
	}
	wg.Wait()
	elapsed := time.Since(t0)
	report("sleepers", elapsed.Seconds(), 4, "s")
	report("sleepers_rss", peakRSSMiB(), 1, "MiB")
}

// time.AfterFunc n times (delay in [1, 2) s), then Stop() every second
// timer.  ns per operation, operations = n AfterFunc + n/2 Stop.
func benchTimers(n int) {
	rng := rand.New(rand.NewSource(42))
	delays := make([]time.Duration, n)
	for i := range delays {
		delays[i] = time.Duration((1.0 + rng.Float64()) * float64(time.Second))
	}
	timers := make([]*time.Timer, n)
	noop := func() {}
	t0 := time.Now()
	for i := 0; i < n; i++ {
		timers[i] = time.AfterFunc(delays[i], noop)
	}
	stopped := 0
	for i := 1; i < n; i += 2 {
		if timers[i].Stop() {
			stopped++
		}
	}
	elapsed := time.Since(t0)
	// Untimed: stop the rest so nothing is left pending.
	for i := 0; i < n; i += 2 {
		if timers[i].Stop() {
			stopped++
		}
	}
	if stopped != n {
		fmt.Fprintf(os.Stderr, "go_bench timers: stopped %d of %d timers\n", stopped, n)
		os.Exit(1)
	}
	report("timers", float64(elapsed.Nanoseconds())/float64(n+n/2), 2, "ns")
}

func main() {
	benches := map[string]func(int){
		"switch":   benchSwitch,
		"spawn":    benchSpawn,
		"sleepers": benchSleepers,
		"timers":   benchTimers,
	}
	usage := func() {
		fmt.Fprintf(os.Stderr, "usage: %s {switch,spawn,sleepers,timers} N\n", os.Args[0])
		os.Exit(2)
	}
	if len(os.Args) != 3 {
		usage()
	}
	fn, ok := benches[os.Args[1]]
	n, err := strconv.Atoi(os.Args[2])
	if !ok || err != nil || n <= 0 {
		usage()
	}
	if os.Getenv("GOMAXPROCS") == "" {
		runtime.GOMAXPROCS(1)
	}
	fn(n)
}
