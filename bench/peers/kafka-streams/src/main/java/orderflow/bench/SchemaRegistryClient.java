package orderflow.bench;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.io.IOException;
import java.io.UncheckedIOException;
import java.net.URI;
import java.net.URLEncoder;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.Map;
import java.util.concurrent.ConcurrentHashMap;
import org.apache.avro.Schema;

/** The Confluent-compatible schema registry: writer schemas fetched by id (once each) and output schemas registered. */
final class SchemaRegistryClient {
    private static final String CONTENT_TYPE = "application/vnd.schemaregistry.v1+json";
    private static final ObjectMapper JSON = new ObjectMapper();

    private final String baseUrl;
    private final HttpClient http;
    /** Writer schemas by id; shared by every stream thread, filled on first sight of an id. */
    private final Map<Integer, Schema> byId = new ConcurrentHashMap<>();

    SchemaRegistryClient(String baseUrl) {
        this.baseUrl = baseUrl;
        this.http = HttpClient.newBuilder().connectTimeout(Duration.ofSeconds(10)).build();
    }

    /** The schema registered under {@code id}, from the cache or {@code GET /schemas/ids/{id}}. */
    Schema schemaById(int id) {
        return byId.computeIfAbsent(id, this::fetch);
    }

    private Schema fetch(int id) {
        HttpRequest request = HttpRequest.newBuilder(URI.create(baseUrl + "/schemas/ids/" + id))
                .timeout(Duration.ofSeconds(30))
                .header("Accept", CONTENT_TYPE)
                .GET()
                .build();
        JsonNode body = send(request, "schema id " + id);
        JsonNode schema = body.get("schema");
        if (schema == null || !schema.isTextual()) {
            throw new IllegalStateException("registry answer for schema id " + id + " has no schema: " + body);
        }
        return new Schema.Parser().parse(schema.asText());
    }

    /**
     * Registers {@code schemaText} under {@code subject} ({@code POST /subjects/{subject}/versions})
     * and returns its id; the same schema again gets the same id.
     */
    int register(String subject, String schemaText) {
        String payload;
        try {
            payload = JSON.writeValueAsString(Map.of("schema", schemaText));
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
        String path = "/subjects/" + URLEncoder.encode(subject, StandardCharsets.UTF_8) + "/versions";
        HttpRequest request = HttpRequest.newBuilder(URI.create(baseUrl + path))
                .timeout(Duration.ofSeconds(30))
                .header("Content-Type", CONTENT_TYPE)
                .header("Accept", CONTENT_TYPE)
                .POST(HttpRequest.BodyPublishers.ofString(payload))
                .build();
        JsonNode body = send(request, "registering " + subject);
        JsonNode id = body.get("id");
        if (id == null || !id.canConvertToInt()) {
            throw new IllegalStateException("registry answer for " + subject + " has no id: " + body);
        }
        return id.asInt();
    }

    private JsonNode send(HttpRequest request, String what) {
        HttpResponse<String> response;
        try {
            response = http.send(request, HttpResponse.BodyHandlers.ofString());
        } catch (IOException e) {
            throw new UncheckedIOException("schema registry " + baseUrl + " (" + what + "): " + e, e);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            throw new IllegalStateException("interrupted while " + what, e);
        }
        if (response.statusCode() != 200) {
            throw new IllegalStateException("schema registry " + baseUrl + " (" + what + ") answered "
                    + response.statusCode() + ": " + response.body());
        }
        try {
            return JSON.readTree(response.body());
        } catch (IOException e) {
            throw new UncheckedIOException("schema registry " + what + ": not JSON: " + response.body(), e);
        }
    }
}
