// Go peer of bench/http_client_bench.c (the `client` benchmark): net/http's
// client.
//
//	HTTP_URL=http://127.0.0.1:PORT/ HTTP_CONC=100 go_bench http_client <N>
//
// One http.Client whose Transport keeps up to HTTP_CONC connections to the
// host (MaxConnsPerHost, MaxIdleConns and MaxIdleConnsPerHost all
// HTTP_CONC: the default of 2 idle connections per host would close and
// reopen connections all the time); HTTP_CONC goroutines take request
// numbers from a shared counter until N GETs of HTTP_URL are done, so at
// most HTTP_CONC requests are in flight.  Every response must have status
// 200; its body is read to the end and closed (so the connection goes back
// to the pool).  Any failure exits 1 without BENCH lines.  Prints
//
//	BENCH client_wall go <seconds> s
//	BENCH client_cpu go <seconds> s
//	BENCH client_rps go <requests per second> req/s
//
// wall: from before the Transport is made to after its idle connections
// are closed; cpu: user + system time of the process (syscall.Getrusage)
// over the same span; rps: N / wall.  Like the other Go peers it runs with
// GOMAXPROCS=1 unless the environment sets GOMAXPROCS (bench/run_http.sh
// runs it so for both workloads: one thread, like cawait's loop).
package main

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

func init() { extraBenches["http_client"] = benchHTTPClient }

func cpuSeconds() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return -1
	}
	tv := func(t syscall.Timeval) float64 {
		return float64(t.Sec) + float64(t.Usec)/1e6
	}
	return tv(ru.Utime) + tv(ru.Stime)
}

func benchHTTPClient(n int) {
	url := os.Getenv("HTTP_URL")
	conc, err := strconv.Atoi(os.Getenv("HTTP_CONC"))
	if url == "" || err != nil || conc <= 0 {
		fmt.Fprintln(os.Stderr, "usage: HTTP_URL=URL HTTP_CONC=C go_bench http_client N")
		os.Exit(2)
	}
	if conc > n {
		conc = n
	}
	c0 := cpuSeconds()
	t0 := time.Now()
	tr := &http.Transport{
		MaxConnsPerHost:     conc,
		MaxIdleConns:        conc,
		MaxIdleConnsPerHost: conc,
		IdleConnTimeout:     90 * time.Second,
	}
	client := &http.Client{Transport: tr}
	var next, done int64
	var failed atomic.Value
	var wg sync.WaitGroup
	wg.Add(conc)
	for w := 0; w < conc; w++ {
		go func() {
			defer wg.Done()
			for atomic.AddInt64(&next, 1) <= int64(n) {
				if failed.Load() != nil {
					return
				}
				resp, err := client.Get(url)
				if err != nil {
					failed.CompareAndSwap(nil, err.Error())
					return
				}
				_, err = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if err != nil {
					failed.CompareAndSwap(nil, err.Error())
					return
				}
				if resp.StatusCode != 200 {
					failed.CompareAndSwap(nil, fmt.Sprintf("status %d", resp.StatusCode))
					return
				}
				atomic.AddInt64(&done, 1)
			}
		}()
	}
	wg.Wait()
	tr.CloseIdleConnections()
	wall := time.Since(t0).Seconds()
	cpu := cpuSeconds() - c0
	if f := failed.Load(); f != nil {
		fmt.Fprintf(os.Stderr, "go_bench http_client: GET %s: %s\n", url, f)
		os.Exit(1)
	}
	if done != int64(n) {
		fmt.Fprintf(os.Stderr, "go_bench http_client: %d of %d requests done\n", done, n)
		os.Exit(1)
	}
	fmt.Printf("BENCH client_wall go %.4f s\n", wall)
	fmt.Printf("BENCH client_cpu go %.4f s\n", cpu)
	fmt.Printf("BENCH client_rps go %.0f req/s\n", float64(n)/wall)
}
