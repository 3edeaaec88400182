// An anchor for bench/run.ts: the TCP proxy most Go programs are, io.Copy both ways.
//
//	goproxy LISTEN_PORT BACKEND_PORT
//
// Listens on 127.0.0.1:LISTEN_PORT, prints "ready", and for each accepted connection dials
// 127.0.0.1:BACKEND_PORT and copies both ways. io.Copy between two *net.TCPConn is
// TCPConn.ReadFrom, which on Linux moves the bytes with splice(2) through a pipe (the runtime's
// own, kept in a pool), with the sockets in the runtime's netpoller: the same kind of work as
// relay(), written the plain way. The harness runs it with GOMAXPROCS=1 (one thread running Go
// code, as relay() has one engine thread) and GOMAXPROCS=2 (both cores, like HAProxy with
// nbthread 2). Built by bench/run.ts with `go build`: one file, the standard library only.
package main

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"time"
)

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: goproxy LISTEN_PORT BACKEND_PORT")
		os.Exit(2)
	}
	backend := "127.0.0.1:" + os.Args[2]
	listener, err := net.Listen("tcp", "127.0.0.1:"+os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, "goproxy:", err)
		os.Exit(1)
	}
	fmt.Println("ready")
	for {
		client, err := listener.Accept()
		if err != nil {
			// EMFILE and the like: the listener stays; wait a moment rather than spin, as a
			// proxy that is meant to stay up does (net/http's Server does the same).
			if errors.Is(err, net.ErrClosed) {
				return
			}
			fmt.Fprintln(os.Stderr, "goproxy: accept:", err)
			time.Sleep(5 * time.Millisecond)
			continue
		}
		go serve(client.(*net.TCPConn), backend)
	}
}

func serve(client *net.TCPConn, backend string) {
	conn, err := net.Dial("tcp", backend)
	if err != nil {
		client.Close()
		return
	}
	server := conn.(*net.TCPConn)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		pipe(server, client)
	}()
	pipe(client, server)
	wg.Wait()
	client.Close()
	server.Close()
}

// pipe copies src to dst until src's end, then half-closes dst so that the peer sees the end
// while the other direction goes on. On an error (a reset, a write to a gone peer) it closes
// both: the other direction's io.Copy then fails at once instead of waiting on a dead peer.
func pipe(dst, src *net.TCPConn) {
	if _, err := io.Copy(dst, src); err != nil {
		dst.Close()
		src.Close()
		return
	}
	dst.CloseWrite()
}
