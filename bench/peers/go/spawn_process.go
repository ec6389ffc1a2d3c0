// Go peer of bench/bench_spawn_process.c:
//
//	go_bench spawn_process N
//
// runs N /bin/true children with os/exec, 50 at a time (a goroutine per
// child, a buffered channel as the semaphore), each started and waited for
// with Cmd.Run (stdio not connected: /dev/null, Go's default), and prints
//
//	BENCH spawn_process go <children_per_s> children/s
package main

import (
	"fmt"
	"os"
	"os/exec"
	"sync"
	"time"
)

const spawnProcessConcurrency = 50

func benchSpawnProcess(n int) {
	sem := make(chan struct{}, spawnProcessConcurrency)
	var wg sync.WaitGroup
	var mu sync.Mutex
	failed := 0
	t0 := time.Now()
	for i := 0; i < n; i++ {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if err := exec.Command("/bin/true").Run(); err != nil {
				mu.Lock()
				failed++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(t0)
	if failed > 0 {
		fmt.Fprintf(os.Stderr, "spawn_process: %d children failed\n", failed)
		os.Exit(1)
	}
	report("spawn_process", float64(n)/elapsed.Seconds(), 0, "children/s")
}

func init() { extraBenches["spawn_process"] = benchSpawnProcess }
