package main

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// slowMirror serves `body` for GETs of `path` in pieces, each sent only when the test releases it.
type slowMirror struct {
	path    string
	body    []byte
	release chan struct{}
	gets    int32
	failAt  int // cut the connection after this many bytes (0: never)
}

// newMirror serves `size` random bytes under the path their digest names.
func newMirror(t *testing.T, size int) *slowMirror {
	body := randomBody(t, size)
	sum := sha256.Sum256(body)
	return &slowMirror{path: "/v2/library/big/blobs/sha256:" + hex.EncodeToString(sum[:]), body: body,
		release: make(chan struct{})}
}

func (m *slowMirror) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodHead {
		w.Header().Set("Content-Length", strconv.Itoa(len(m.body)))
		w.Header().Set("X-Head", "yes")
		return
	}
	atomic.AddInt32(&m.gets, 1)
	if r.URL.Path != m.path {
		w.Write([]byte("{}"))
		return
	}
	w.Header().Set("Content-Length", strconv.Itoa(len(m.body)))
	w.Header().Set("Docker-Content-Digest", m.path[strings.LastIndex(m.path, "/")+1:])
	w.WriteHeader(http.StatusOK)
	w.(http.Flusher).Flush()
	piece := len(m.body) / 4
	for sent := 0; sent < len(m.body); sent += piece {
		<-m.release
		if m.failAt > 0 && sent >= m.failAt {
			panic(http.ErrAbortHandler)
		}
		end := sent + piece
		if end > len(m.body) {
			end = len(m.body)
		}
		w.Write(m.body[sent:end])
		w.(http.Flusher).Flush()
	}
}

func setup(t *testing.T, mirror *slowMirror) *httptest.Server {
	upstreamServer := httptest.NewServer(mirror)
	t.Cleanup(upstreamServer.Close)
	upstream, err := NewUpstream(upstreamServer.URL, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	fanout := httptest.NewServer(NewFanout(upstream, t.TempDir(), time.Minute, log.New(io.Discard, "", 0)))
	t.Cleanup(fanout.Close)
	return fanout
}

func randomBody(t *testing.T, size int) []byte {
	body := make([]byte, size)
	if _, err := rand.Read(body); err != nil {
		t.Fatal(err)
	}
	return body
}

func TestClientsArrivingDuringAFillGetHeadersAtOnceAndShareOneFetch(t *testing.T) {
	mirror := newMirror(t, 4<<20)
	fanout := setup(t, mirror)

	first := get(t, fanout.URL+mirror.path)
	mirror.release <- struct{}{} // a quarter is spooled; the rest waits on the test
	// Clients that arrive now get their headers while three quarters are still upstream.
	var late []*http.Response
	for i := 0; i < 5; i++ {
		resp, err := http.Get(fanout.URL + mirror.path)
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != 200 || resp.ContentLength != int64(len(mirror.body)) {
			t.Fatalf("late client: status %d length %d", resp.StatusCode, resp.ContentLength)
		}
		late = append(late, resp)
	}
	go mirror.releaseChunks(3)
	var wg sync.WaitGroup
	for _, resp := range append(late, first) {
		wg.Add(1)
		go func(resp *http.Response) {
			defer wg.Done()
			defer resp.Body.Close()
			got, err := io.ReadAll(resp.Body)
			if err != nil || !bytes.Equal(got, mirror.body) {
				t.Errorf("a client got %d bytes (err %v), not the blob", len(got), err)
			}
		}(resp)
	}
	wg.Wait()
	if gets := atomic.LoadInt32(&mirror.gets); gets != 1 {
		t.Fatalf("%d upstream GETs, want 1", gets)
	}
}

func TestAFillThatBreaksBreaksEveryAnswerInsteadOfEndingItShort(t *testing.T) {
	mirror := newMirror(t, 1<<20)
	mirror.failAt = 1 << 19
	fanout := setup(t, mirror)
	first := get(t, fanout.URL+mirror.path)
	second := get(t, fanout.URL+mirror.path)
	go mirror.releaseChunks(3)
	for _, resp := range []*http.Response{first, second} {
		got, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err == nil {
			t.Fatalf("a client read %d of %d bytes without an error", len(got), len(mirror.body))
		}
	}
	// The next request starts a new fill.
	mirror.failAt = 0
	go mirror.releaseChunks(4)
	resp := get(t, fanout.URL+mirror.path)
	got, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || !bytes.Equal(got, mirror.body) {
		t.Fatalf("the fill after a broken one: %d bytes, err %v", len(got), err)
	}
}

func TestAClientThatLeavesDoesNotStopTheFillForTheOthers(t *testing.T) {
	mirror := newMirror(t, 1<<20)
	fanout := setup(t, mirror)
	first := get(t, fanout.URL+mirror.path)
	second := get(t, fanout.URL+mirror.path)
	first.Body.Close()
	go mirror.releaseChunks(4)
	got, err := io.ReadAll(second.Body)
	second.Body.Close()
	if err != nil || !bytes.Equal(got, mirror.body) {
		t.Fatalf("the client that stayed: %d bytes, err %v", len(got), err)
	}
}

func TestBytesThatAreNotTheDigestNeverEndAnAnswer(t *testing.T) {
	mirror := newMirror(t, 1<<20)
	mirror.body[len(mirror.body)-1] ^= 0xff // S3 handed the registry something else
	fanout := setup(t, mirror)
	resp := get(t, fanout.URL+mirror.path)
	go mirror.releaseChunks(4)
	got, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err == nil || len(got) >= len(mirror.body) {
		t.Fatalf("a client read %d of %d bytes, err %v: an answer that looks whole", len(got), len(mirror.body), err)
	}
}

func TestHeadsRangesAndOtherPathsPassThrough(t *testing.T) {
	mirror := newMirror(t, 8)
	mirror.release = make(chan struct{}, 4)
	fanout := setup(t, mirror)
	resp, err := http.Head(fanout.URL + mirror.path)
	if err != nil || resp.Header.Get("X-Head") != "yes" {
		t.Fatalf("HEAD was not passed through: %v %v", err, resp.Header)
	}
	for i := 0; i < 4; i++ {
		mirror.release <- struct{}{}
	}
	req, _ := http.NewRequest(http.MethodGet, fanout.URL+mirror.path, nil)
	req.Header.Set("Range", "bytes=0-3")
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.ReadAll(resp.Body)
	resp.Body.Close()
	resp, err = http.Get(fanout.URL + "/v2/")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("/v2/ was not passed through: %v", err)
	}
	if gets := atomic.LoadInt32(&mirror.gets); gets != 2 {
		t.Fatalf("%d upstream GETs, want 2 (the ranged blob GET and /v2/)", gets)
	}
}

func TestAMirrorThatCannotBeReachedGivesA502(t *testing.T) {
	upstream, _ := NewUpstream("unix:/nonexistent/mirror.sock", time.Second)
	fanout := httptest.NewServer(NewFanout(upstream, t.TempDir(), time.Second, log.New(io.Discard, "", 0)))
	defer fanout.Close()
	resp := get(t, fanout.URL+newMirror(t, 8).path)
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusBadGateway || !strings.Contains(string(body), "UNAVAILABLE") {
		t.Fatalf("status %d body %q", resp.StatusCode, body)
	}
}

func get(t *testing.T, url string) *http.Response {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

// releaseChunks lets the mirror send n more chunks.
func (m *slowMirror) releaseChunks(n int) {
	for i := 0; i < n; i++ {
		m.release <- struct{}{}
	}
}
