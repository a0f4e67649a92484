package orderflow.bench;

import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.util.Map;
import java.util.concurrent.ConcurrentHashMap;
import org.apache.avro.Schema;
import org.apache.avro.generic.GenericDatumReader;
import org.apache.avro.generic.GenericDatumWriter;
import org.apache.avro.generic.GenericRecord;
import org.apache.avro.io.BinaryDecoder;
import org.apache.avro.io.BinaryEncoder;
import org.apache.avro.io.DatumReader;
import org.apache.avro.io.DecoderFactory;
import org.apache.avro.io.EncoderFactory;
import org.apache.kafka.common.errors.SerializationException;
import org.apache.kafka.common.serialization.Deserializer;
import org.apache.kafka.common.serialization.Serde;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.common.serialization.Serializer;

/**
 * Confluent-framed Avro (0x00, big-endian schema id, Avro binary) for one topic's schema:
 * decodes whatever writer schema id a record names (fetched once from the registry) into
 * the topic's schema file, and encodes with the id that file was registered under.
 * One instance is shared by all stream threads, so its caches are concurrent and its
 * decoders per thread.
 */
final class RegistryAvroSerde {
    private static final byte MAGIC = 0;

    private final SchemaRegistryClient registry;
    private final Schema schema;
    /** The id {@link #schema} was registered under, or -1 for an input-only serde. */
    private final int writeId;
    private final GenericDatumWriter<GenericRecord> writer;
    /** A reader from each writer schema id seen into {@link #schema}. */
    private final Map<Integer, DatumReader<Object>> readers = new ConcurrentHashMap<>();
    private final ThreadLocal<BinaryDecoder> decoders = new ThreadLocal<>();
    private final ThreadLocal<BinaryEncoder> encoders = new ThreadLocal<>();

    private RegistryAvroSerde(SchemaRegistryClient registry, Schema schema, int writeId) {
        this.registry = registry;
        this.schema = schema;
        this.writeId = writeId;
        this.writer = new GenericDatumWriter<>(schema);
    }

    /** A serde that only decodes, into {@code schema}. */
    static RegistryAvroSerde forInput(SchemaRegistryClient registry, Schema schema) {
        return new RegistryAvroSerde(registry, schema, -1);
    }

    /** A serde that decodes into and encodes with {@code schema}, registered as {@code writeId}. */
    static RegistryAvroSerde forOutput(SchemaRegistryClient registry, Schema schema, int writeId) {
        return new RegistryAvroSerde(registry, schema, writeId);
    }

    /** The topic schema records are decoded into and encoded with. */
    Schema schema() {
        return schema;
    }

    /** The Kafka serde. */
    Serde<GenericRecord> serde() {
        return Serdes.serdeFrom(serializer(), deserializer());
    }

    /** The Kafka deserializer: a tombstone is null, anything not framed is an error. */
    Deserializer<GenericRecord> deserializer() {
        return (topic, data) -> data == null ? null : decode(topic, data);
    }

    /** The Kafka serializer: null stays a tombstone. */
    Serializer<GenericRecord> serializer() {
        return (topic, record) -> record == null ? null : encode(topic, record);
    }

    /** Decodes one framed value. */
    GenericRecord decode(String topic, byte[] data) {
        if (data.length < 5 || data[0] != MAGIC) {
            throw new SerializationException("value on " + topic + " is not Confluent-framed Avro ("
                    + data.length + " bytes)");
        }
        int id = ((data[1] & 0xff) << 24) | ((data[2] & 0xff) << 16) | ((data[3] & 0xff) << 8) | (data[4] & 0xff);
        DatumReader<Object> reader = readers.computeIfAbsent(id,
                i -> new GenericDatumReader<>(registry.schemaById(i), schema));
        BinaryDecoder decoder = DecoderFactory.get().binaryDecoder(data, 5, data.length - 5, decoders.get());
        decoders.set(decoder);
        try {
            Object value = reader.read(null, decoder);
            if (!(value instanceof GenericRecord)) {
                throw new SerializationException("value on " + topic + " decoded to " + value + ", not a record");
            }
            return (GenericRecord) value;
        } catch (IOException | RuntimeException e) {
            throw new SerializationException("value on " + topic + " (schema id " + id + ") does not decode: " + e, e);
        }
    }

    /** Encodes one record with this serde's registered id. */
    byte[] encode(String topic, GenericRecord record) {
        if (writeId < 0) {
            throw new SerializationException("no schema registered for writing to " + topic);
        }
        ByteArrayOutputStream out = new ByteArrayOutputStream(256);
        out.write(MAGIC);
        out.write(writeId >>> 24);
        out.write(writeId >>> 16);
        out.write(writeId >>> 8);
        out.write(writeId);
        BinaryEncoder encoder = EncoderFactory.get().directBinaryEncoder(out, encoders.get());
        encoders.set(encoder);
        try {
            writer.write(record, encoder);
            encoder.flush();
        } catch (IOException | RuntimeException e) {
            throw new SerializationException("record for " + topic + " does not encode: " + e, e);
        }
        return out.toByteArray();
    }
}
