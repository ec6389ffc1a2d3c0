// Go peers of the cawait benchmarks (standard library only).
//
//	GOMAXPROCS=1 go_bench <bench> <N>
//	GOMAXPROCS=1 go_bench gather <N> [SECONDS]
//	GOMAXPROCS=1 go_bench echo <PORT>
//
// bench is one of switch, spawn, sleepers, timers, gather, queue, lock; each
// measures what the C program bench/bench_<bench>.c measures, the same way
// (monotonic clock, peak RSS from getrusage), and prints
//
//	BENCH <name> go <value> <unit>
//
// Random delays come from math/rand seeded with 42 and are drawn before the
// clock starts, like the C benchmarks.  GOMAXPROCS defaults to 1 when the
// environment does not set it, so goroutines share one thread like cawait's
// tasks.
//
// echo is the Go server of the echo and idle benchmarks (bench/run.sh drives
// it with bench/echo_client.c and bench/idle_client.c): it listens on
// 127.0.0.1:PORT (0: any free port), prints "listening on <port>", and
// serves every connection in its own goroutine with a read / write loop
// (the buffer size bench/echo_server.c reads with) until SIGINT or SIGTERM.
// Go sets TCP_NODELAY on every connection, and since Go 1.19 raises
// RLIMIT_NOFILE to the hard limit by itself.
package main

import (
	"fmt"
	"math/rand"
	"net"
	"os"
	"os/signal"
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
	// The best of 3 rounds, as bench_spawn reports.
	best := 0.0
	for round := 0; round < 3; round++ {
		var wg sync.WaitGroup
		empty := func() { wg.Done() }
		t0 := time.Now()
		wg.Add(n)
		for i := 0; i < n; i++ {
			go empty()
		}
		wg.Wait()
		elapsed := time.Since(t0).Seconds()
		if round == 0 || elapsed < best {
			best = elapsed
		}
	}
	report("spawn", best, 4, "s")
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

// Rounds of gather, queue and lock; the best round is reported, as the C
// programs do (this is a noisy shared VM).
const gatherRounds = 3
const queueRounds = 3
const lockRounds = 3

// gather: n goroutines each time.Sleep(seconds), joined with a WaitGroup.
// Overhead = wall time (first go statement to Wait's return) - seconds, in
// ms; the best of gatherRounds rounds.
func benchGather(n int, seconds float64) {
	d := time.Duration(seconds * float64(time.Second))
	best := 0.0
	for round := 0; round < gatherRounds; round++ {
		var wg sync.WaitGroup
		sleeper := func() {
			time.Sleep(d)
			wg.Done()
		}
		t0 := time.Now()
		wg.Add(n)
		for i := 0; i < n; i++ {
			go sleeper()
		}
		wg.Wait()
		ms := float64(time.Since(t0).Nanoseconds())/1e6 - seconds*1e3
		if round == 0 || ms < best {
			best = ms
		}
	}
	report("gather_overhead", best, 3, "ms")
}

// queue: a producer goroutine sends 0..n-1 into a channel buffered to 64;
// main receives them (checking the order).  ns per item, best of
// queueRounds rounds.
func benchQueue(n int) {
	best := 0.0
	for round := 0; round < queueRounds; round++ {
		ch := make(chan int, 64)
		t0 := time.Now()
		go func() {
			for i := 0; i < n; i++ {
				ch <- i
			}
		}()
		for i := 0; i < n; i++ {
			if v := <-ch; v != i {
				fmt.Fprintf(os.Stderr, "go_bench queue: got %d, want %d\n", v, i)
				os.Exit(1)
			}
		}
		ns := float64(time.Since(t0).Nanoseconds()) / float64(n)
		if round == 0 || ns < best {
			best = ns
		}
	}
	report("queue", best, 2, "ns")
}

// lock: two goroutines each take one sync.Mutex n/2 times and call
// runtime.Gosched() while holding it, so the other one finds it held and
// waits.  ns per Lock/Unlock pair, best of lockRounds rounds.
func benchLock(n int) {
	half := n / 2
	best := 0.0
	for round := 0; round < lockRounds; round++ {
		var mu sync.Mutex
		var wg sync.WaitGroup
		holder := 0
		worker := func(me int) {
			defer wg.Done()
			for i := 0; i < half; i++ {
				mu.Lock()
				holder = me
				runtime.Gosched()
				if holder != me {
					fmt.Fprintln(os.Stderr, "go_bench lock: two goroutines inside the lock")
					os.Exit(1)
				}
				mu.Unlock()
			}
		}
		t0 := time.Now()
		wg.Add(2)
		go worker(1)
		go worker(2)
		wg.Wait()
		ns := float64(time.Since(t0).Nanoseconds()) / float64(2*half)
		if round == 0 || ns < best {
			best = ns
		}
	}
	report("lock", best, 2, "ns")
}

// Read size of the echo server: the size bench/echo_server.c reads with.
const echoBufSize = 16384

func echoConn(c net.Conn) {
	defer c.Close()
	buf := make([]byte, echoBufSize)
	for {
		n, err := c.Read(buf)
		if n > 0 {
			if _, werr := c.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return // io.EOF, or the idle benchmark's client reset it
		}
	}
}

// echo: serve on 127.0.0.1:port until SIGINT or SIGTERM.
func echoServer(port int) {
	ln, err := net.Listen("tcp4", "127.0.0.1:"+strconv.Itoa(port))
	if err != nil {
		fmt.Fprintf(os.Stderr, "go_bench echo: %v\n", err)
		os.Exit(1)
	}
	fmt.Printf("listening on %d\n", ln.Addr().(*net.TCPAddr).Port)
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		<-sigs
		ln.Close()
	}()
	for {
		c, err := ln.Accept()
		if err != nil {
			if ne, ok := err.(net.Error); ok && ne.Temporary() {
				time.Sleep(10 * time.Millisecond) // out of descriptors
				continue
			}
			return // closed by the signal
		}
		go echoConn(c)
	}
}

// extraBenches holds benchmarks defined in other files of this package;
// each registers itself from an init function, so that adding one does not
// touch this file.
var extraBenches = map[string]func(int){}

func main() {
	if len(os.Args) == 3 && os.Args[1] == "echo" {
		port, err := strconv.Atoi(os.Args[2])
		if err != nil || port < 0 || port > 65535 {
			fmt.Fprintf(os.Stderr, "usage: %s echo PORT   (0: any free port)\n", os.Args[0])
			os.Exit(2)
		}
		if os.Getenv("GOMAXPROCS") == "" {
			runtime.GOMAXPROCS(1)
		}
		echoServer(port)
		return
	}
	benches := map[string]func(int){
		"switch":   benchSwitch,
		"spawn":    benchSpawn,
		"sleepers": benchSleepers,
		"timers":   benchTimers,
		"queue":    benchQueue,
		"lock":     benchLock,
	}
	for name, fn := range extraBenches {
		benches[name] = fn
	}
	usage := func() {
		fmt.Fprintf(os.Stderr, "usage: %s {switch,spawn,sleepers,timers,queue,lock} N\n", os.Args[0])
		fmt.Fprintf(os.Stderr, "       %s gather N [SECONDS]\n", os.Args[0])
		fmt.Fprintf(os.Stderr, "       %s echo PORT\n", os.Args[0])
		os.Exit(2)
	}
	if len(os.Args) < 3 {
		usage()
	}
	n, err := strconv.Atoi(os.Args[2])
	if err != nil || n <= 0 {
		usage()
	}
	var run func()
	if os.Args[1] == "gather" {
		if len(os.Args) > 4 {
			usage()
		}
		seconds := 0.1
		if len(os.Args) == 4 {
			seconds, err = strconv.ParseFloat(os.Args[3], 64)
			if err != nil || !(seconds >= 0) || seconds > 1e6 {
				usage()
			}
		}
		run = func() { benchGather(n, seconds) }
	} else {
		fn, ok := benches[os.Args[1]]
		if !ok || len(os.Args) != 3 {
			usage()
		}
		run = func() { fn(n) }
	}
	if os.Getenv("GOMAXPROCS") == "" {
		runtime.GOMAXPROCS(1)
	}
	run()
}
