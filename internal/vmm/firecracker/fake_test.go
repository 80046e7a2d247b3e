package firecracker

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/getkin/kin-openapi/openapi2"
	"github.com/getkin/kin-openapi/openapi2conv"
	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/gorillamux"
)

// specRelPath is where Firecracker's swagger spec lives relative to an
// ancestor of the repository: the repo is <X>/main, the spec <X>/shared/...
const specRelPath = "shared/firecracker/firecracker-api.yaml"

// findSpec walks up from the working directory (the package directory under
// go test) looking for <ancestor>/shared/firecracker/firecracker-api.yaml.
func findSpec() (string, bool) {
	dir, err := os.Getwd()
	if err != nil {
		return "", false
	}
	for {
		p := filepath.Join(dir, specRelPath)
		if _, err := os.Stat(p); err == nil {
			return p, true
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", false
		}
		dir = parent
	}
}

// specPath returns the spec's path or skips the test, saying why.
func specPath(t testing.TB) string {
	t.Helper()
	p, ok := findSpec()
	if !ok {
		t.Skipf("Firecracker API spec not found: no ancestor of the package directory has %s; contract tests need it", specRelPath)
	}
	return p
}

// loadStrictSpec loads the swagger 2.0 spec, converts it to OpenAPI 3 and
// makes every object schema reject unknown properties unless the spec says
// otherwise, then builds a router for it.
func loadStrictSpec(path string) (*openapi3.T, routers.Router, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, err
	}
	var doc2 openapi2.T
	if err := openapi2.UnmarshalFromData(data, &doc2); err != nil {
		return nil, nil, fmt.Errorf("parse %s: %w", path, err)
	}
	doc, err := openapi2conv.ToV3(&doc2)
	if err != nil {
		return nil, nil, fmt.Errorf("convert %s to OpenAPI 3: %w", path, err)
	}
	if err := doc.Validate(context.Background()); err != nil {
		return nil, nil, fmt.Errorf("converted spec is invalid: %w", err)
	}
	makeStrict(doc)
	router, err := gorillamux.NewRouter(doc)
	if err != nil {
		return nil, nil, err
	}
	return doc, router, nil
}

// makeStrict sets additionalProperties: false on every object schema that
// does not declare additionalProperties, so unknown request fields fail.
func makeStrict(doc *openapi3.T) {
	seen := map[*openapi3.Schema]bool{}
	var walk func(*openapi3.SchemaRef)
	walk = func(ref *openapi3.SchemaRef) {
		if ref == nil || ref.Value == nil || seen[ref.Value] {
			return
		}
		s := ref.Value
		seen[s] = true
		if (s.Type.Is(openapi3.TypeObject) || len(s.Properties) > 0) &&
			s.AdditionalProperties.Has == nil && s.AdditionalProperties.Schema == nil {
			s.AdditionalProperties.Has = openapi3.Ptr(false)
		}
		for _, p := range s.Properties {
			walk(p)
		}
		walk(s.Items)
		walk(s.AdditionalProperties.Schema)
		for _, list := range []openapi3.SchemaRefs{s.AllOf, s.AnyOf, s.OneOf} {
			for _, x := range list {
				walk(x)
			}
		}
	}
	for _, s := range doc.Components.Schemas {
		walk(s)
	}
	for _, item := range doc.Paths.Map() {
		for _, op := range item.Operations() {
			if rb := op.RequestBody; rb != nil && rb.Value != nil {
				for _, mt := range rb.Value.Content {
					walk(mt.Schema)
				}
			}
		}
	}
}

// apiRequest is one request the fake received.
type apiRequest struct {
	Method  string         `json:"method"`
	Path    string         `json:"path"`
	Body    map[string]any `json:"body,omitempty"`
	Invalid string         `json:"invalid,omitempty"` // why the spec rejects it
	PID     int            `json:"pid,omitempty"`     // helper's "I started" record
}

func (r apiRequest) String() string { return r.Method + " " + r.Path }

// fakeFirecracker serves Firecracker's API: it validates every request
// against the strict spec (an invalid request gets 400 with the reason as
// fault_message and is recorded as Invalid) and emulates the Firecracker
// behaviour the driver depends on: files named in the API must exist (the
// log file is opened, not created), the vsock socket must not exist and is
// bound at InstanceStart, pre-boot resources are refused after boot, and the
// guest console appears on stdout.
type fakeFirecracker struct {
	doc    *openapi3.T
	router routers.Router
	id     string
	// root, when set, is the jail root: API paths resolve under it.
	root string
	// failAction is an action_type answered with 400.
	failAction string
	console    io.Writer
	record     func(apiRequest)

	mu      sync.Mutex
	reqs    []apiRequest
	started bool
	vsock   string
	lis     []net.Listener
}

func newFake(doc *openapi3.T, router routers.Router) *fakeFirecracker {
	return &fakeFirecracker{doc: doc, router: router, id: "fake", console: io.Discard}
}

func (f *fakeFirecracker) requests() []apiRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]apiRequest(nil), f.reqs...)
}

func (f *fakeFirecracker) close() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, l := range f.lis {
		l.Close()
	}
}

func (f *fakeFirecracker) hostPath(p string) string {
	if f.root == "" {
		return p
	}
	return filepath.Join(f.root, filepath.Clean("/"+p))
}

func (f *fakeFirecracker) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	rec := apiRequest{Method: r.Method, Path: r.URL.Path}
	if len(body) > 0 {
		_ = json.Unmarshal(body, &rec.Body)
	}
	route, params, err := f.router.FindRoute(r)
	if err == nil {
		r.Body = io.NopCloser(bytes.NewReader(body))
		err = openapi3filter.ValidateRequest(r.Context(), &openapi3filter.RequestValidationInput{
			Request:    r,
			PathParams: params,
			Route:      route,
			Options:    &openapi3filter.Options{RejectWhenRequestBodyNotSpecified: true, SkipSettingDefaults: true},
		})
	}
	if err != nil {
		rec.Invalid = err.Error()
	}
	f.mu.Lock()
	f.reqs = append(f.reqs, rec)
	record := f.record
	f.mu.Unlock()
	if record != nil {
		record(rec)
	}
	if err != nil {
		reason, _, _ := strings.Cut(err.Error(), "\n") // the rest is a schema dump
		fault(w, http.StatusBadRequest, "invalid request (spec): "+reason)
		return
	}
	if r.Method == http.MethodGet && r.URL.Path == "/" {
		f.describe(w, r, route)
		return
	}
	if msg := f.emulate(r.URL.Path, params, rec.Body); msg != "" {
		fault(w, http.StatusBadRequest, msg)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (f *fakeFirecracker) describe(w http.ResponseWriter, r *http.Request, route *routers.Route) {
	f.mu.Lock()
	state := "Not started"
	if f.started {
		state = "Running"
	}
	f.mu.Unlock()
	b, _ := json.Marshal(map[string]any{"id": f.id, "state": state, "vmm_version": "1.17.0-dev", "app_name": "Firecracker"})
	// Hold the fake to the spec too.
	if err := openapi3filter.ValidateResponse(r.Context(), &openapi3filter.ResponseValidationInput{
		RequestValidationInput: &openapi3filter.RequestValidationInput{Request: r, Route: route},
		Status:                 http.StatusOK,
		Header:                 http.Header{"Content-Type": {"application/json"}},
		Body:                   io.NopCloser(bytes.NewReader(b)),
	}); err != nil {
		fault(w, http.StatusInternalServerError, "fake answer invalid: "+err.Error())
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(b)
}

// emulate applies Firecracker's semantics to a spec-valid request and
// returns a fault message, or "" for success.
func (f *fakeFirecracker) emulate(path string, params map[string]string, body map[string]any) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	str := func(k string) string { s, _ := body[k].(string); return s }
	mustExist := func(what, p string) string {
		if p == "" {
			return ""
		}
		if _, err := os.Stat(f.hostPath(p)); err != nil {
			return fmt.Sprintf("%s %s: %v", what, p, err)
		}
		return ""
	}
	if f.started && path != "/actions" {
		return "The requested operation is not supported after starting the microVM."
	}
	switch {
	case path == "/logger":
		return mustExist("log file", str("log_path"))
	case path == "/boot-source":
		if m := mustExist("kernel", str("kernel_image_path")); m != "" {
			return m
		}
		return mustExist("initrd", str("initrd_path"))
	case strings.HasPrefix(path, "/drives/"):
		if params["drive_id"] != str("drive_id") {
			return "The id from the path does not match the id from the body!"
		}
		return mustExist("drive", str("path_on_host"))
	case strings.HasPrefix(path, "/network-interfaces/"):
		if params["iface_id"] != str("iface_id") {
			return "The id from the path does not match the id from the body!"
		}
	case path == "/vsock":
		if _, err := os.Lstat(f.hostPath(str("uds_path"))); err == nil {
			return "vsock uds_path already exists: Address in use"
		}
		f.vsock = str("uds_path")
	case path == "/actions":
		action := str("action_type")
		if action == f.failAction {
			return "fake failure of " + action
		}
		switch action {
		case "InstanceStart":
			if f.started {
				return "The microVM is already running."
			}
			if f.vsock != "" {
				l, err := net.Listen("unix", f.hostPath(f.vsock))
				if err != nil {
					return "vsock: " + err.Error()
				}
				f.lis = append(f.lis, l)
			}
			f.started = true
			fmt.Fprintln(f.console, "fake guest console: Linux version 6.1 booting")
		case "SendCtrlAltDel":
			if !f.started {
				return "The microVM is not running."
			}
		}
	}
	return ""
}

func fault(w http.ResponseWriter, status int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]string{"fault_message": msg})
}

// serve serves f on a new Unix socket at path until the returned stop.
func (f *fakeFirecracker) serve(path string) (stop func(), err error) {
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, err
	}
	srv := &http.Server{Handler: f}
	go func() { _ = srv.Serve(l) }()
	return func() {
		_ = srv.Close()
		f.close()
	}, nil
}

// startFake serves a validating fake on a socket in a temp dir.
func startFake(t *testing.T) (*fakeFirecracker, string) {
	t.Helper()
	doc, router, err := loadStrictSpec(specPath(t))
	if err != nil {
		t.Fatal(err)
	}
	f := newFake(doc, router)
	sock := filepath.Join(t.TempDir(), "api.sock")
	stop, err := f.serve(sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)
	return f, sock
}

// assertAllValid fails the test for every request the spec rejected.
func assertAllValid(t *testing.T, reqs []apiRequest) {
	t.Helper()
	for _, r := range reqs {
		if r.Invalid != "" {
			t.Errorf("%s was invalid against the Firecracker spec: %s", r, r.Invalid)
		}
	}
}
