// Go peer of bench/bench_to_thread.c: blocking work handed to other
// threads, in Go's natural form, a goroutine per job.
//
//	go_bench to_thread <N>
//
// to_thread: N goroutines, each running one trivial job (adding its number
// to a sum), started at once and waited for with a WaitGroup; jobs/s = N /
// wall time, best of toThreadRounds rounds, the sum checked.
//
// to_thread_latency: one goroutine starts a goroutine for a trivial job and
// waits for its result on a channel, toThreadLatN times in a row; the
// median round trip in microseconds, after toThreadLatWarm of warm-up.
//
// Unlike the other Go peers this one runs with Go's default GOMAXPROCS (one
// P per CPU) unless the environment sets it: handing work to other threads
// is the point of the benchmark.
package main

import (
	"fmt"
	"os"
	"runtime"
	"sort"
	"sync"
	"sync/atomic"
	"time"
)

const (
	toThreadRounds  = 3
	toThreadLatN    = 20000
	toThreadLatWarm = 1000
)

func init() { extraBenches["to_thread"] = benchToThread }

//go:noinline
func trivialJob() int { return 1 }

func benchToThread(n int) {
	if os.Getenv("GOMAXPROCS") == "" {
		runtime.GOMAXPROCS(runtime.NumCPU())
	}
	best := 0.0
	for round := 0; round < toThreadRounds; round++ {
		var sum uint64
		var wg sync.WaitGroup
		t0 := time.Now()
		wg.Add(n)
		for i := 1; i <= n; i++ {
			go func(v uint64) {
				atomic.AddUint64(&sum, v)
				wg.Done()
			}(uint64(i))
		}
		wg.Wait()
		secs := time.Since(t0).Seconds()
		if sum != uint64(n)*uint64(n+1)/2 {
			fmt.Fprintln(os.Stderr, "go_bench to_thread: jobs lost (sum mismatch)")
			os.Exit(1)
		}
		if round == 0 || secs < best {
			best = secs
		}
	}
	report("to_thread", float64(n)/best, 0, "jobs/s")

	ch := make(chan int)
	roundTrip := func() {
		go func() { ch <- trivialJob() }()
		if <-ch != 1 {
			fmt.Fprintln(os.Stderr, "go_bench to_thread: bad result")
			os.Exit(1)
		}
	}
	for i := 0; i < toThreadLatWarm; i++ {
		roundTrip()
	}
	times := make([]int64, toThreadLatN)
	for i := range times {
		t0 := time.Now()
		roundTrip()
		times[i] = time.Since(t0).Nanoseconds()
	}
	sort.Slice(times, func(a, b int) bool { return times[a] < times[b] })
	report("to_thread_latency", float64(times[len(times)/2])/1e3, 2, "us")
}
